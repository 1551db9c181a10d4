"""The README's Python example runs as written (on made-up updates of a small conv net)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "the README lost its Python example"
    rng = np.random.default_rng(0)
    updates = [
        {
            "conv.weight": (rng.laplace(size=(32, 16, 3, 3)) * 1e-3).astype(np.float32),
            "conv.bias": rng.normal(size=32).astype(np.float32),
            "bn.num_batches_tracked": np.array(5, dtype=np.int64),
        }
        for _ in range(3)
    ]
    scope: dict = {"updates": updates}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 - our own README
    restored, last = scope["restored"], updates[-1]
    bound = 1e-2 * float(last["conv.weight"].max() - last["conv.weight"].min())
    assert np.abs(restored["conv.weight"] - last["conv.weight"]).max() <= bound
    assert np.array_equal(restored["conv.bias"], last["conv.bias"])  # biases go lossless
    assert scope["enc"].last_stats.ratio > 1
