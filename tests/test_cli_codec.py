"""``fedpress compress`` / ``decompress`` / ``codecs`` end to end, through the console script.

Each ``compress`` pays for importing torch (a few seconds), so the traces are built and coded
once per module and the refusals use inputs that fail before torch is imported.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

REL_EB = 1e-2
CLIENTS, ROUNDS = 2, 3
LOSSY_NAMES = {"conv1.weight", "fc.weight", "emb.weight"}  # > 1024 elements, float, not bias/norm
BF16_LOSSY = "emb.weight"


def fedpress_exe() -> str:
    here = Path(sys.executable).parent / "fedpress"
    exe = str(here) if here.exists() else shutil.which("fedpress")
    assert exe, "the fedpress console script is not installed"
    return exe


def run_cli(*args: object, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [fedpress_exe(), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fedpress: error:") and len(lines[0]) < 400
    return lines[0]


def round_tensors(client: int, rnd: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * client + rnd)
    base = torch.Generator().manual_seed(client)
    conv = torch.randn(32, 16, 3, 3, generator=base)  # shared across rounds: correlated
    return {
        "conv1.weight": (0.05 * (conv + 0.5 * torch.randn(32, 16, 3, 3, generator=g))),
        "conv1.bias": torch.randn(32, generator=g),
        "fc.weight": torch.randn(64, 40, generator=g) * 1e-3,
        "bn1.num_batches_tracked": torch.tensor(rnd * 10, dtype=torch.int64),
        "bn1.running_mean": torch.randn(32, generator=g),
        "small.weight": torch.randn(8, 16, generator=g).to(torch.bfloat16),
        BF16_LOSSY: torch.randn(64, 40, generator=g).to(torch.bfloat16),
        "ids": torch.arange(50, dtype=torch.int64).reshape(5, 10),
    }


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trace")
    for c in range(CLIENTS):
        (root / f"client_{c}").mkdir()
        for r in range(1, ROUNDS + 1):
            save_file(round_tensors(c, r), str(root / f"client_{c}" / f"round_{r}.safetensors"))
    return root


def run_many(commands: list[list[object]], timeout: int = 120) -> list[subprocess.CompletedProcess]:
    """Run CLI commands side by side (each pays for its own torch import)."""
    procs = [
        subprocess.Popen(
            [fedpress_exe(), *map(str, c)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in commands
    ]
    out = []
    for cmd, p in zip(commands, procs, strict=True):
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
    return out


@pytest.fixture(scope="module")
def runs(trace, tmp_path_factory) -> dict:
    """Every torch-importing command of this module, in two parallel batches."""
    work = tmp_path_factory.mktemp("runs")
    single_src = trace / "client_1" / "round_2.safetensors"
    compress = {
        "grad": [
            "compress",
            trace,
            work / "grad",
            "--codec",
            "grad",
            "--mode",
            "rel",
            "--eb",
            REL_EB,
        ],
        "sz3": ["compress", trace, work / "sz3", "--codec", "sz3", "--mode", "rel", "--eb", REL_EB],
        "single": ["compress", single_src, work / "one.fpz", "--codec", "zstd"],
    }
    res = dict(zip(compress, run_many(list(compress.values())), strict=True))
    for key in ("grad", "sz3", "single"):
        assert res[key].returncode == 0, res[key].stderr
    decompress = {
        "grad_back": ["decompress", work / "grad", work / "grad_back"],
        "sz3_back": ["decompress", work / "sz3", work / "sz3_back"],
        "single_back": ["decompress", work / "one.fpz", work / "one.safetensors"],
    }
    res.update(zip(decompress, run_many(list(decompress.values())), strict=True))
    for key in ("grad_back", "sz3_back", "single_back"):
        assert res[key].returncode == 0, res[key].stderr
    return {"work": work, "single_src": single_src, **res}


def rel_bound(x: torch.Tensor) -> float:
    a = x.double()
    return REL_EB * float(a.max() - a.min())


def check_outputs(trace: Path, fpz: Path, back: Path, lossless: bool) -> None:
    fpz_files = sorted(p.relative_to(fpz).as_posix() for p in fpz.rglob("*") if p.is_file())
    want = [f"client_{c}/round_{r}.fpz" for c in range(CLIENTS) for r in range(1, ROUNDS + 1)]
    assert fpz_files == want
    changed = 0
    for c in range(CLIENTS):
        for r in range(1, ROUNDS + 1):
            orig = load_file(str(trace / f"client_{c}" / f"round_{r}.safetensors"))
            out = load_file(str(back / f"client_{c}" / f"round_{r}.safetensors"))
            assert set(out) == set(orig)
            for name, x in orig.items():
                y = out[name]
                lossy_bf16 = not lossless and name == BF16_LOSSY
                assert y.dtype == (torch.float32 if lossy_bf16 else x.dtype), name
                assert tuple(y.shape) == tuple(x.shape), name
                if lossless or name not in LOSSY_NAMES:
                    assert torch.equal(y, x), name
                else:
                    err = float((y.double() - x.double()).abs().max())
                    assert err <= rel_bound(x), (name, err, rel_bound(x))
                    changed += err > 0
    if not lossless:  # the large float weights really went through the lossy codec
        assert changed == CLIENTS * ROUNDS * len(LOSSY_NAMES)
    leftovers = [p for p in back.rglob(".fedpress-*")] + [p for p in fpz.rglob(".fedpress-*")]
    assert not leftovers


def test_grad_compress_decompress(trace, runs) -> None:
    work, comp = runs["work"], runs["grad"]
    check_outputs(trace, work / "grad", work / "grad_back", lossless=False)
    assert f"decoded {CLIENTS * ROUNDS} payload(s)" in runs["grad_back"].stdout
    raw, _, enc = comp.stdout.split()[:3]
    assert int(enc) < int(raw)  # "<raw> -> <encoded> bytes, ratio <r>"
    assert "ratio" in comp.stdout


def test_sz3(trace, runs) -> None:
    check_outputs(trace, runs["work"] / "sz3", runs["work"] / "sz3_back", lossless=False)


def test_bfloat16_bound_after_decompress(trace, runs) -> None:
    # a lossy bfloat16 tensor comes back as float32: rounding to bfloat16 would break the bound
    back = runs["work"] / "grad_back"
    for c in range(CLIENTS):
        for r in range(1, ROUNDS + 1):
            x = load_file(str(trace / f"client_{c}" / f"round_{r}.safetensors"))[BF16_LOSSY]
            y = load_file(str(back / f"client_{c}" / f"round_{r}.safetensors"))[BF16_LOSSY]
            assert y.dtype == torch.float32
            assert float((y.double() - x.double()).abs().max()) <= rel_bound(x)


def test_single_file_to_fpz_path_with_zstd(runs) -> None:
    """One file in, one ``.fpz`` path out (lossless codec: everything exact), and back."""
    work, src = runs["work"], runs["single_src"]
    assert (work / "one.fpz").read_bytes()[:4] == b"FPZ\x00"
    assert not (work / "one.fpz" / "round_2.fpz").exists()
    assert "decoded 1 payload(s)" in runs["single_back"].stdout
    orig, out = load_file(str(src)), load_file(str(work / "one.safetensors"))
    assert set(out) == set(orig)
    for name, x in orig.items():
        assert out[name].dtype == x.dtype and out[name].shape == x.shape
        assert torch.equal(out[name], x), name


@pytest.fixture(scope="module")
def one_fpz(runs) -> bytes:
    return (runs["work"] / "grad" / "client_0" / "round_1.fpz").read_bytes()


def corruptions(payload: bytes) -> dict[str, bytes]:
    mid = len(payload) // 2
    flipped = bytearray(payload)
    flipped[mid] ^= 0x10
    header_flip = bytearray(payload)
    header_flip[20] ^= 0x01
    return {
        "empty": b"",
        "short": payload[:10],
        "truncated-header": payload[:40],
        "truncated-frames": payload[:-7],
        "bit-flip-frame": bytes(flipped),
        "bit-flip-header": bytes(header_flip),
        "trailing": payload + b"\x00",
        "garbage": bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
        "text": b"hello, not a payload\n",
    }


BAD_KINDS = [
    "empty",
    "short",
    "truncated-header",
    "truncated-frames",
    "bit-flip-frame",
    "bit-flip-header",
    "trailing",
    "garbage",
    "text",
]


@pytest.fixture(scope="module")
def bad_runs(one_fpz, tmp_path_factory) -> dict:
    """Decompress every corrupted payload (side by side: these fail before torch is imported)."""
    dirs = {}
    for kind, data in corruptions(one_fpz).items():
        d = tmp_path_factory.mktemp(f"bad-{kind}")
        (d / "bad.fpz").write_bytes(data)
        dirs[kind] = d
    procs = run_many([["decompress", d / "bad.fpz", d / "out.safetensors"] for d in dirs.values()])
    return {kind: (dirs[kind], proc) for kind, proc in zip(dirs, procs, strict=True)}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_fpz_is_refused(bad_runs, kind: str) -> None:
    d, proc = bad_runs[kind]
    line = assert_one_line_error(proc)
    assert "bad.fpz" in line
    assert sorted(p.name for p in d.iterdir()) == ["bad.fpz"]  # no output, no temp file


def test_missing_rounds_are_refused(runs, tmp_path) -> None:
    """A stream that does not start at its keyframe: refused before anything is written."""
    src = tmp_path / "fpz"
    shutil.copytree(runs["work"] / "grad" / "client_0", src / "client_0")
    (src / "client_0" / "round_1.fpz").unlink()
    proc = run_cli("decompress", src, tmp_path / "back")
    line = assert_one_line_error(proc)
    assert "round_2.fpz" in line and "state" in line
    assert not (tmp_path / "back").exists()


USAGE_ERRORS = {
    "compress-missing": ["compress", "{missing}", "{out}"],
    "decompress-missing": ["decompress", "{missing}", "{out}"],
    "compress-empty-dir": ["compress", "{empty_dir}", "{out}"],
    "decompress-empty-dir": ["decompress", "{empty_dir}", "{out}"],
    "bad-safetensors": ["compress", "{bad_st}", "{out}"],
    "unknown-codec": ["compress", "{empty_dir}", "{out}", "--codec", "nope"],
    "eb-too-large": ["compress", "{empty_dir}", "{out}", "--eb", "2"],
    "eb-negative": ["compress", "{empty_dir}", "{out}", "--eb", "-1"],
    "unknown-param": ["compress", "{empty_dir}", "{out}", "--param", "bogus=1"],
}


@pytest.fixture(scope="module")
def usage_runs(tmp_path_factory) -> dict:
    dirs, commands = {}, []
    for key, args in USAGE_ERRORS.items():
        d = tmp_path_factory.mktemp(f"usage-{key}")
        (d / "empty").mkdir()
        (d / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
        paths = {
            "missing": d / "nope",
            "out": d / "out",
            "empty_dir": d / "empty",
            "bad_st": d / "bad.safetensors",
        }
        dirs[key] = d
        commands.append([a.format(**paths) for a in args])
    return {key: (dirs[key], proc) for key, proc in zip(dirs, run_many(commands), strict=True)}


@pytest.mark.parametrize("key", list(USAGE_ERRORS))
def test_usage_errors_are_one_line(usage_runs, key: str) -> None:
    d, proc = usage_runs[key]
    assert_one_line_error(proc)
    assert not (d / "out").exists()


def test_codecs_lists_the_codecs() -> None:
    proc = run_cli("codecs")
    assert proc.returncode == 0, proc.stderr
    names = {line.split()[0] for line in proc.stdout.splitlines() if line and not line[0].isspace()}
    assert {"grad", "linear", "sz3", "zstd"} <= names
    grad_line = next(line for line in proc.stdout.splitlines() if line.startswith("grad "))
    assert "stateful" in grad_line and "eb=" in grad_line
