"""Task items, prompts and both scores, checked against independent arithmetic."""

from __future__ import annotations

import operator

import pytest

pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")

from fedpress.llm.models import tiny_causal_lm
from fedpress.llm.tasks import (
    TASKS,
    build_prompt,
    evaluate_task,
    extract_any,
    extract_formatted,
    generate_answers,
    make_items,
    score_reply,
    split_items,
    training_pair,
    worked_answer,
)

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _value(expr: str) -> int:
    a, op, b = expr.split()
    return OPS[op](int(a), int(b))


@pytest.mark.parametrize("task", ["add1", "addsub1", "products1"])
def test_items_are_distinct_and_answers_match_arithmetic(task):
    items = make_items(task, 400, seed=1)
    qs = [it.question for it in items]
    assert len(set(qs)) == len(qs)
    # reasoning-gym's one-digit operands run 0..10: at most 121 ordered pairs per operator
    n_ops = len(TASKS[task][1].get("operators", ("*",)))
    assert 0 < len(items) <= 121 * n_ops
    for it in items:
        assert int(it.answer) == _value(it.expression)


def test_split_is_disjoint_and_complete():
    items = make_items("add1", 300, seed=2)
    tr, ev = split_items(items, 0.25, seed=0)
    assert not {i.question for i in tr} & {i.question for i in ev}
    assert len(tr) + len(ev) == len(items)
    assert len(ev) == round(0.25 * len(items))
    with pytest.raises(ValueError):
        split_items(items, 1.0)


def test_extractors():
    assert extract_formatted("5 + 3 = 8\nAnswer: 8") == "8"
    assert extract_formatted("Answer: 2\nAnswer: -14") == "-14"
    assert extract_formatted("the result is 8") is None
    assert extract_any("5 + 3 = 8.") == "8"
    assert extract_any("no digits") is None


def test_two_scores_come_apart():
    item = next(it for it in make_items("add1", 50, seed=3) if int(it.answer) > 1)
    right = str(_value(item.expression))
    wrong = str(_value(item.expression) + 1)
    assert score_reply(item, f"{item.expression} = {right}\nAnswer: {right}") == (True, True)
    assert score_reply(item, f"It is {right}.") == (False, True)
    assert score_reply(item, f"Answer: {wrong}") == (False, False)
    assert score_reply(item, f"Answer: {wrong} no wait {right}") == (False, True)
    assert score_reply(item, "") == (False, False)


def test_prompts_use_chat_template_and_one_shot():
    _, tok = tiny_causal_lm()
    a, b = make_items("add1", 20, seed=4)[:2]
    p = build_prompt(tok, a)
    assert p.startswith("<|im_start|>user\n" + a.question)
    assert p.endswith("<|im_start|>assistant\n")
    p1 = build_prompt(tok, a, one_shot=b)
    assert p1.count("<|im_start|>user") == 2 and worked_answer(b) in p1
    prompt, completion = training_pair(tok, a)
    assert prompt == p and completion == worked_answer(a) + "<|im_end|>"
    assert completion.startswith(f"{a.expression} = {a.answer}\nAnswer: {a.answer}")


def test_batched_generation_equals_one_by_one():
    model, tok = tiny_causal_lm(seed=1)
    items = make_items("addsub1", 30, seed=5)[:5]
    prompts = [build_prompt(tok, it) for it in items]
    batched = generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=5)
    single = [generate_answers(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    res = evaluate_task(model, tok, items, max_new_tokens=4)
    assert res["n_items"] == 5 and 0.0 <= res["acc_format"] <= res["acc_content"] <= 1.0
