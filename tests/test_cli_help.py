"""The command line explains itself: --version, every subcommand's --help, every option with a
description and its default; and compress's --nonfinite reaches the codec layer."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedpress import cli


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's --help / --version exit
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


OWN = sorted(set(_subparsers(cli.build_parser())) - set(cli.DELEGATED))


def test_version_matches_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"fedpress {importlib.metadata.version('fedpress')}"


def test_version_from_the_console_entry_point() -> None:
    res = subprocess.run([sys.executable, "-m", "fedpress.cli", "--version"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("fedpress ")


def test_top_level_help_is_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    assert "``" not in out and ":func:" not in out  # no RST
    for name in list(_subparsers(cli.build_parser())):
        assert f"\n    {name}" in out, name  # every command is listed with its help
    assert "--version" in out


@pytest.mark.parametrize("name", OWN)
def test_own_subcommand_help_explains_every_option(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run([name, "--help"], capsys)
    assert code == 0 and out.startswith(f"usage: fedpress {name}")
    sub = _subparsers(cli.build_parser())[name]
    text = " ".join(out.split())  # help text re-wrapped onto one line
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name} {action.dest}: no description"
        if action.option_strings and action.default is not None:
            shown = str(action.default)
            assert f"default: {shown})" in text or f"default {shown}" in text, \
                f"{name} {action.option_strings[0]}: default {shown!r} not shown"
        if action.choices:
            assert "{" + ",".join(map(str, action.choices)) + "}" in out


def test_codec_choices_come_from_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    from fedpress.codec.base import available_codecs

    for name in ("compress", "bench-codecs"):
        _, out, _ = _run([name, "--help"], capsys)
        text = " ".join(out.split())
        assert ", ".join(available_codecs()) in text
        assert cli.CODEC_NAMES not in out


@pytest.mark.parametrize("name", sorted(cli.DELEGATED))
def test_delegated_subcommand_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run([name, "--help"], capsys)
    assert code == 0 and "usage:" in out


def test_bench_default_output_is_outside_the_repo_results() -> None:
    bench = _subparsers(cli.build_parser())["bench-codecs"]
    out = next(a for a in bench._actions if a.dest == "out").default
    assert not out.startswith("benchmarks/")


# ---------------------------------------------------------------------- --nonfinite


def _write_nan_tensor(path: Path) -> np.ndarray:
    import torch
    from safetensors.torch import save_file

    x = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    x[3, 5], x[10, 0] = np.nan, np.inf
    save_file({"w": torch.from_numpy(x)}, str(path))
    return x


def test_compress_nonfinite_refused_by_default(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "u.safetensors"
    _write_nan_tensor(src)
    code, _, err = _run(["compress", str(src), str(tmp_path / "u.fpz"), "--codec", "linear"],
                        capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith("fedpress: error:")
    assert "NaN" in err or "non-finite" in err
    assert not (tmp_path / "u.fpz").exists()


def test_compress_nonfinite_lossless_roundtrip(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.numpy import load_file

    src = tmp_path / "u.safetensors"
    x = _write_nan_tensor(src)
    with pytest.warns(UserWarning, match="NaN"):
        code, _, err = _run(["compress", str(src), str(tmp_path / "u.fpz"), "--codec", "linear",
                             "--nonfinite", "lossless"], capsys)
    assert code == 0, err
    code, _, err = _run(["decompress", str(tmp_path / "u.fpz"), str(tmp_path / "r.safetensors")],
                        capsys)
    assert code == 0, err
    y = load_file(str(tmp_path / "r.safetensors"))["w"]
    np.testing.assert_array_equal(y, x)  # the tensor with NaN/Inf went exactly


def test_bad_param_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "u.safetensors"
    _write_nan_tensor(src)
    code, _, err = _run(["compress", str(src), str(tmp_path / "o.fpz"), "--param", "contexts"],
                        capsys)
    assert code == 1 and err.startswith("fedpress: error: --param expects KEY=VALUE")
