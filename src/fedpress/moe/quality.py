"""What a lossy expert codec costs, measured item by item against the resident model.

Why not accuracy alone: 38 one-digit additions give a standard error of ~0.08, so a bar of
"at most 1 point" cannot be judged from two accuracies. Here the resident model and the decoded
(compressed) model answer the same items with greedy decoding, and three things are reported:
each model's accuracy with its standard error, the *paired* difference (items lost minus items
gained, with the standard error of the per-item differences, far smaller than either accuracy's),
and token-level agreement of the generations (identical replies; share of the resident reply
reproduced before the first different token), which is stricter than any answer score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedpress.llm.tasks import TaskItem, build_prompt, score_reply


@dataclass
class Generations:
    """Greedy replies of one model to one task's items: new token ids, text, and both scores."""

    tokens: list[list[int]]
    replies: list[str]
    formatted: list[bool]
    content: list[bool]


@torch.no_grad()
def generate_tokens(model: Any, tok: Any, prompts: Sequence[str], max_new_tokens: int,
                    batch_size: int = 8) -> list[list[int]]:
    """Greedy new-token ids per prompt (left-padded batches, as ``llm.tasks.generate_answers``),
    cut after the first end-of-sequence token and with padding dropped."""
    side, tok.padding_side = tok.padding_side, "left"
    eos, pad = tok.eos_token_id, tok.pad_token_id
    out: list[list[int]] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tok(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True,
                      add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=eos)
            for row in gen[:, enc["input_ids"].shape[1]:].tolist():
                ids: list[int] = []
                for t in row:
                    ids.append(t)
                    if t == eos:
                        break
                out.append(ids)
    finally:
        tok.padding_side = side
    return out


def answer(model: Any, tok: Any, items: Sequence[TaskItem], one_shot: TaskItem | None,
           max_new_tokens: int, batch_size: int = 8) -> Generations:
    """Generate and score (reasoning-gym's checker) the replies to ``items``."""
    prompts = [build_prompt(tok, it, one_shot) for it in items]
    tokens = generate_tokens(model, tok, prompts, max_new_tokens, batch_size)
    replies = tok.batch_decode(tokens, skip_special_tokens=True)
    scores = [score_reply(it, r) for it, r in zip(items, replies, strict=True)]
    return Generations(tokens, replies, [f for f, _ in scores], [c for _, c in scores])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def token_agreement(ref: Sequence[Sequence[int]], got: Sequence[Sequence[int]]) -> dict[str, float]:
    """``identical``: share of replies equal token for token; ``prefix``: mean share of the
    reference reply reproduced before the first different token (1 for an identical reply)."""
    if len(ref) != len(got) or not ref:
        raise ValueError(f"token_agreement needs two equally long, non-empty lists ({len(ref)}, {len(got)})")
    same = [list(a) == list(b) for a, b in zip(ref, got, strict=True)]
    pre = [1.0 if s else common_prefix(a, b) / max(len(a), 1) for a, b, s in zip(ref, got, same, strict=True)]
    return {"identical": sum(same) / len(same), "prefix": sum(pre) / len(pre)}


def mean_se(x: Sequence[bool | float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n); 0 for n < 2)."""
    n = len(x)
    m = sum(float(v) for v in x) / n
    if n < 2:
        return m, 0.0
    var = sum((float(v) - m) ** 2 for v in x) / (n - 1)
    return m, math.sqrt(var / n)


def paired(ref: Sequence[bool], got: Sequence[bool]) -> dict[str, float]:
    """Accuracy of ``got`` minus ``ref`` on the same items, with the paired standard error."""
    d = [float(g) - float(r) for r, g in zip(ref, got, strict=True)]
    diff, se = mean_se(d)
    return {"diff": diff, "diff_se": se, "lost": float(sum(v < 0 for v in d)), "gained": float(sum(v > 0 for v in d))}


def compare(ref: Generations, got: Generations) -> dict[str, Any]:
    """Accuracies (with standard errors), paired differences and token agreement of ``got``."""
    acc_f, se_f = mean_se(got.formatted)
    acc_c, se_c = mean_se(got.content)
    return {"n": len(got.formatted), "acc_format": acc_f, "acc_format_se": se_f, "acc_content": acc_c,
            "acc_content_se": se_c, "format_vs_ref": paired(ref.formatted, got.formatted),
            "content_vs_ref": paired(ref.content, got.content), "tokens_vs_ref": token_agreement(ref.tokens, got.tokens)}


def concat(gens: Sequence[Generations]) -> Generations:
    """Several tasks' generations as one (to pool items: each item weighs the same)."""
    return Generations(*([v for g in gens for v in getattr(g, a)] for a in ("tokens", "replies", "formatted", "content")))
