"""Arithmetic tasks from ``reasoning-gym`` with a required answer format, prompts and scoring.

Every item must be answered with a final line ``Answer: N``. Two scores come apart on small
models and both are reported: *formatted* (the ``Answer: N`` line holds the right answer) and
*content* (the right answer appears as the last number of the reply, format ignored).
Correctness is reasoning-gym's own ``score_answer`` for the item's dataset (score 1.0 = right).

The problem spaces of small settings are tiny (about 100 one-digit additions), so items are
generated, de-duplicated by question, and split into disjoint train and held-out eval sets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

ANSWER_INSTRUCTION = "Give your final answer on the last line as 'Answer: N'."
FORMAT_RE = re.compile(r"Answer:\s*(-?\d[\d,]*(?:\.\d+)?)")
NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")

#: preset name -> (reasoning-gym dataset, its config)
TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "add1": (
        "basic_arithmetic",
        dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+",),
             allow_parentheses=False, allow_negation=False),
    ),
    "addsub1": (
        "basic_arithmetic",
        dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+", "-"),
             allow_parentheses=False, allow_negation=False),
    ),
    "products1": ("products", dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)),
    "chain_sum": ("chain_sum", dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2)),
}


@dataclass(frozen=True)
class TaskItem:
    """One question with its reference answer and the reasoning-gym entry used to score it."""

    question: str
    answer: str
    expression: str
    dataset: str
    entry: dict[str, Any] = field(compare=False, hash=False, repr=False)


def make_items(task: str, n: int, seed: int = 0) -> list[TaskItem]:
    """Up to ``n`` distinct items of a preset (or raw reasoning-gym dataset name), in a stable order.

    ``n`` items are generated and de-duplicated by question text, so fewer come back when the
    problem space is smaller than ``n``.
    """
    import reasoning_gym as rg

    if task in TASKS:
        name, cfg = TASKS[task]
    else:
        name, cfg = task, {}
    ds = rg.create_dataset(name, size=n, seed=seed, **cfg)
    seen: set[str] = set()
    out: list[TaskItem] = []
    for entry in ds:
        q = entry["question"]
        if q in seen:
            continue
        seen.add(q)
        expr = str(entry.get("metadata", {}).get("expression", "")).strip()
        out.append(TaskItem(q, str(entry["answer"]), expr, name, dict(entry)))
    return out


def split_items(
    items: Sequence[TaskItem], eval_fraction: float = 0.3, seed: int = 0
) -> tuple[list[TaskItem], list[TaskItem]]:
    """Shuffle and split into ``(train, eval)``; questions never appear in both."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    order = np.random.default_rng(seed).permutation(len(items))
    n_eval = max(1, int(round(len(items) * eval_fraction)))
    ev = [items[i] for i in order[:n_eval]]
    tr = [items[i] for i in order[n_eval:]]
    return tr, ev


def worked_answer(item: TaskItem) -> str:
    """The reply a model should give: the worked expression, then the required answer line."""
    if item.expression:
        return f"{item.expression} = {item.answer}\nAnswer: {item.answer}"
    return f"Answer: {item.answer}"


def _user(item: TaskItem) -> str:
    return f"{item.question}\n{ANSWER_INSTRUCTION}"


def build_messages(item: TaskItem, one_shot: TaskItem | None = None) -> list[dict[str, str]]:
    """Chat messages for ``item``, optionally preceded by a worked one-shot example."""
    msgs: list[dict[str, str]] = []
    if one_shot is not None:
        msgs += [
            {"role": "user", "content": _user(one_shot)},
            {"role": "assistant", "content": worked_answer(one_shot)},
        ]
    msgs.append({"role": "user", "content": _user(item)})
    return msgs


def build_prompt(tok: Any, item: TaskItem, one_shot: TaskItem | None = None) -> str:
    """The prompt text (chat template applied, generation prompt added)."""
    return tok.apply_chat_template(
        build_messages(item, one_shot), tokenize=False, add_generation_prompt=True
    )


def training_pair(tok: Any, item: TaskItem, one_shot: TaskItem | None = None) -> tuple[str, str]:
    """``(prompt, completion)`` for supervised fine-tuning; completion ends with the EOS token."""
    return build_prompt(tok, item, one_shot), worked_answer(item) + (tok.eos_token or "")


def extract_formatted(text: str) -> str | None:
    """The number on the last ``Answer: N`` line, or None when the format was not followed."""
    found = FORMAT_RE.findall(text)
    return found[-1] if found else None


def extract_any(text: str) -> str | None:
    """The last number anywhere in the text (format ignored)."""
    found = NUMBER_RE.findall(text)
    return found[-1] if found else None


def score_reply(item: TaskItem, reply: str) -> tuple[bool, bool]:
    """``(right in the required format, right ignoring the format)`` by reasoning-gym's checker."""
    import reasoning_gym as rg

    score = rg.get_score_answer_fn(item.dataset)
    fmt = extract_formatted(reply)
    formatted = fmt is not None and score(fmt, item.entry) >= 1.0
    anyn = extract_any(reply)
    content = formatted or (anyn is not None and score(anyn, item.entry) >= 1.0)
    return formatted, content


@torch.no_grad()
def generate_answers(
    model: Any, tok: Any, prompts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 8
) -> list[str]:
    """Greedy replies to ``prompts`` (left-padded batches; new tokens only, specials dropped)."""
    was_training = model.training
    model.eval()
    side = tok.padding_side
    tok.padding_side = "left"
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tok(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True,
                      add_special_tokens=False)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            out += tok.batch_decode(new, skip_special_tokens=True)
    finally:
        tok.padding_side = side
        model.train(was_training)
    return out


def evaluate_task(
    model: Any,
    tok: Any,
    items: Sequence[TaskItem],
    one_shot: TaskItem | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> dict[str, float]:
    """Accuracy on ``items``: ``acc_format`` (right, in format) and ``acc_content`` (right)."""
    if not items:
        return {"acc_format": float("nan"), "acc_content": float("nan"), "n_items": 0.0}
    prompts = [build_prompt(tok, it, one_shot) for it in items]
    replies = generate_answers(model, tok, prompts, max_new_tokens, batch_size)
    scores = [score_reply(it, r) for it, r in zip(items, replies, strict=True)]
    return {
        "acc_format": float(np.mean([f for f, _ in scores])),
        "acc_content": float(np.mean([c for _, c in scores])),
        "n_items": float(len(items)),
    }
