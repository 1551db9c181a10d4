"""The federated LM corpus: shipped text and task items, corrupted by tier, tokenised once.

One corpus serves every skew of a study (only the partition changes). Each sample keeps its token
ids (text truncated to ``seq_len``; task items kept whole), the index of its first scored token (task items score only the
answer), its source, its corruption tier and, for task items, the item. Tokenised ids are cached
under ``~/.cache/fedpress/tokens/`` keyed by the tokenizer and the texts.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .tasks import TaskItem, make_items, split_items, training_pair, worked_answer
from .text import CORRUPTION_RATES, corrupt, corrupt_answer, news_paragraphs, wiki_paragraphs

SOURCES = ("wiki", "news", "task")


@dataclass
class Corpus:
    """Training samples plus the clean server test text and the held-out task items."""

    ids: list[np.ndarray]
    loss_start: np.ndarray
    tier: np.ndarray
    source: list[str]
    items: list[TaskItem | None]
    test_ids: list[np.ndarray] = field(default_factory=list)
    eval_items: list[TaskItem] = field(default_factory=list)
    one_shot: TaskItem | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids], dtype=np.int64)

    @property
    def scored_tokens(self) -> np.ndarray:
        return np.array([max(len(x) - int(s), 0) for x, s in zip(self.ids, self.loss_start, strict=True)])

    def __len__(self) -> int:
        return len(self.ids)


def _cache_dir() -> Path:
    base = os.environ.get("FEDPRESS_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "fedpress") / "tokens"


def _tok_key(tok: Any) -> str:
    return f"{getattr(tok, 'name_or_path', '')}|{len(tok)}|{type(tok).__name__}"


def tokenize_cached(tok: Any, texts: Sequence[str], use_cache: bool = True) -> list[np.ndarray]:
    """Token ids of each text (no special tokens), cached on disk by tokenizer and content."""
    h = hashlib.sha1(_tok_key(tok).encode())
    for t in texts:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\0")
    path = _cache_dir() / f"{h.hexdigest()[:20]}.npz"
    if use_cache and path.is_file():
        with np.load(path) as z:
            flat, off = z["flat"], z["offsets"]
        return [flat[off[i] : off[i + 1]] for i in range(len(off) - 1)]
    enc = tok(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    out = [np.asarray(e, dtype=np.int32) for e in enc]
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        off = np.cumsum([0] + [len(x) for x in out])
        tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, flat=np.concatenate(out) if out else np.zeros(0, np.int32), offsets=off)
        tmp.replace(path)
    return out


def build_corpus(
    tok: Any,
    sources: Sequence[str] = SOURCES,
    seq_len: int = 128,
    task: str = "add1",
    task_items: int = 400,
    eval_items: int = 40,
    max_text_samples: int | None = 600,
    test_samples: int = 40,
    rates: Sequence[float] = CORRUPTION_RATES,
    one_shot: bool = False,
    seed: int = 0,
    use_cache: bool = True,
) -> Corpus:
    """Build the corpus; every training sample gets a uniformly random corruption tier.

    The server test text (``test_samples`` clean passages) and ``eval_items`` task items are
    held out before anything else, so no client trains on them.
    """
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise ValueError(f"unknown text source(s) {bad}; known: {', '.join(SOURCES)}")
    rng = np.random.default_rng([seed, 11])
    texts: list[str] = []
    src: list[str] = []
    for name, fn in (("wiki", wiki_paragraphs), ("news", news_paragraphs)):
        if name in sources:
            paras = fn()
            texts += paras
            src += [name] * len(paras)
    order = rng.permutation(len(texts))
    n_test = min(test_samples, len(texts) // 5) if texts else 0
    test_texts = [texts[i] for i in order[:n_test]]
    keep = order[n_test:]
    if max_text_samples is not None:
        keep = keep[:max_text_samples]
    texts, src = [texts[i] for i in keep], [src[i] for i in keep]
    vocab = sorted({w for t in texts[:400] for w in t.split()})
    tiers = rng.integers(len(rates), size=len(texts) + (task_items if "task" in sources else 0))
    eos = tok.eos_token or ""
    sample_texts = [corrupt(t, rates[int(tiers[i])], rng, vocab) + eos for i, t in enumerate(texts)]
    starts = [0] * len(texts)
    items: list[TaskItem | None] = [None] * len(texts)
    ev: list[TaskItem] = []
    shot: TaskItem | None = None
    if "task" in sources:
        all_items = make_items(task, task_items, seed=seed)
        frac = min(0.9, max(eval_items, 1) / max(len(all_items), 2))
        train_items, ev = split_items(all_items, frac, seed=seed)
        ev = ev[:eval_items]
        if one_shot and train_items:
            shot = train_items[0]
        prompts, completions = [], []
        for j, it in enumerate(train_items):
            tier = int(tiers[len(texts) + j])
            prompt, _ = training_pair(tok, it, shot)
            ans = corrupt_answer(it.answer, rates[tier], rng)
            wrong = TaskItem(it.question, ans, it.expression, it.dataset, it.entry)
            prompts.append(prompt)
            completions.append(worked_answer(wrong) + eos)
            src.append("task")
            items.append(it)
        p_ids = tokenize_cached(tok, prompts, use_cache)
        starts += [len(p) for p in p_ids]
        sample_texts += [p + c for p, c in zip(prompts, completions, strict=True)]
        tiers = tiers[: len(src)]
    else:
        tiers = tiers[: len(texts)]
    # text is cut to seq_len; task items are kept whole (prompt + answer, about 70 tokens with
    # SmolLM2's default system prompt): cutting them would drop the only scored tokens
    ids = [x if s == "task" else x[:seq_len]
           for x, s in zip(tokenize_cached(tok, sample_texts, use_cache), src, strict=True)]
    test_ids = [x[:seq_len] for x in tokenize_cached(tok, [t + eos for t in test_texts], use_cache)]
    starts_arr = np.minimum(np.asarray(starts, np.int64), [max(len(x) - 1, 0) for x in ids])
    return Corpus(ids, starts_arr, np.asarray(tiers, np.int64), src, items, test_ids, ev, shot)


def corpus_summary(c: Corpus) -> dict[str, Any]:
    """Counts for logs and docs: samples and tokens per source and tier."""
    out: dict[str, Any] = {"samples": len(c), "tokens": int(c.lengths.sum())}
    for s in SOURCES:
        m = np.array([x == s for x in c.source])
        if m.any():
            out[f"{s}_samples"] = int(m.sum())
    out["tier_counts"] = np.bincount(c.tier).tolist()
    out["test_samples"] = len(c.test_ids)
    out["eval_items"] = len(c.eval_items)
    return json.loads(json.dumps(out))
