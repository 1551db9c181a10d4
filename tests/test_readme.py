"""The README's examples work as pasted: its Python block(s) run exactly as written (no names
supplied by the test), and every ``fedpress`` command it shows exists.

README.md is read at run time, so the test checks the text a user reads.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md"]


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_python_blocks_run_as_pasted(path: Path) -> None:
    blocks = _blocks(path, "python")
    assert blocks, f"{path.name} lost its Python example"
    for i, block in enumerate(blocks):
        scope: dict = {"__name__": "__readme__"}
        try:
            exec(compile(block, f"{path.name}[python block {i}]", "exec"), scope)  # noqa: S102
        except NameError as exc:
            pytest.fail(f"{path.name}: Python block {i} uses a name it never defines ({exc})")
        if "updates" in scope and "restored" in scope:  # the codec example: check it for real
            last = scope["updates"][-1]
            w = np.asarray(last["conv.weight"], dtype=np.float64)
            bound = 1e-2 * float(w.max() - w.min())  # REL 1e-2 written out independently
            assert np.abs(scope["restored"]["conv.weight"] - w).max() <= bound
            assert np.array_equal(scope["restored"]["conv.bias"], last["conv.bias"])
            assert scope["enc"].last_stats.ratio > 1


def _subcommands() -> set[str]:
    from fedpress import cli

    for action in cli.build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_shown_commands_exist(path: Path) -> None:
    known = _subcommands()
    for block in _blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():  # join continued lines
            words = shlex.split(line.split("#", 1)[0]) if "fedpress" in line else []
            for j, word in enumerate(words[:-1]):
                if word in ("fedpress", ".venv/bin/fedpress") and not words[j + 1].startswith("-"):
                    assert words[j + 1] in known, f"{path.name}: unknown command in {line!r}"
