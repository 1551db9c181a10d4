"""The codec commands: no torch, clear advice for stream files, all-or-nothing directories,
NaN/Inf on request, ``bench-codecs`` validated before work, crafted payloads refused in one line.

Outputs are checked with ``safetensors.torch`` (an independent reader of what our numpy writer
produced); the commands themselves run in child processes that must never import torch.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import zlib
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedpress.bench.codecs import main_bench
from fedpress.cli_codec import CliError, compress, decompress
from fedpress.codec.errors import CodecError
from fedpress.codec.routing import Policy

EB = 1e-2


def write_trace(root: Path, clients: int = 2, rounds: int = 3) -> Path:
    for c in range(clients):
        (root / f"client_{c}").mkdir(parents=True)
        for r in range(1, rounds + 1):
            g = torch.Generator().manual_seed(10 * c + r)
            save_file({
                "fc.weight": torch.randn(48, 40, generator=g) * 1e-2,
                "emb.weight": torch.randn(40, 40, generator=g).to(torch.bfloat16),
                "small.weight": torch.randn(4, 8, generator=g).to(torch.bfloat16),
                "fc.bias": torch.randn(48, generator=g),
                "steps": torch.tensor([r], dtype=torch.int64),
                "half": torch.randn(33, 40, generator=g).to(torch.float16),
            }, str(root / f"client_{c}" / f"round_{r}.safetensors"))
    return root


def run_module(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedpress.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedpress: error:"), proc.stderr
    return lines[0]


NO_TORCH = """
import sys
from pathlib import Path
import fedpress.cli_codec as cc
from fedpress.codec.routing import Policy
src, out, back = map(Path, sys.argv[1:4])
res = cc.compress(src, out, Policy.default(sys.argv[4], mode="rel", eb=1e-2))
n = cc.decompress(out, back)
heavy = sorted(m for m in ("torch", "numba") if m in sys.modules)
print(n, res["encoded_bytes"] < res["raw_bytes"], ",".join(heavy) or "-")
"""


@pytest.mark.parametrize("codec", ["grad", "fast"])
def test_compress_decompress_without_torch(codec: str, tmp_path: Path) -> None:
    src = write_trace(tmp_path / "trace")
    out, back = tmp_path / "fpz", tmp_path / "back"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(NO_TORCH), src, out, back, codec],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n, smaller, heavy = proc.stdout.split()
    assert n == "6" and smaller == "True"
    assert "torch" not in heavy  # numba is fine for `fast`, and only for it
    assert ("numba" in heavy) == (codec == "fast")
    for c in range(2):
        for r in range(1, 4):
            x = load_file(str(src / f"client_{c}" / f"round_{r}.safetensors"))
            y = load_file(str(back / f"client_{c}" / f"round_{r}.safetensors"))
            assert set(x) == set(y)
            assert torch.equal(x["steps"], y["steps"]) and torch.equal(x["fc.bias"], y["fc.bias"])
            assert y["small.weight"].dtype == torch.bfloat16  # exact bfloat16 stays bfloat16
            assert torch.equal(x["small.weight"], y["small.weight"])
            assert y["emb.weight"].dtype == torch.float32  # lossy bfloat16 comes back as float32
            assert y["half"].dtype == torch.float16
            for name in ("fc.weight", "emb.weight", "half"):
                a, b = x[name].double(), y[name].double()
                assert float((a - b).abs().max()) <= EB * float(a.max() - a.min()), name


@pytest.fixture(scope="module")
def coded(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coded")
    compress(write_trace(root / "trace"), root / "fpz", Policy.default("grad", mode="rel", eb=EB))
    return root / "fpz"


def test_single_stream_file_gets_advice(coded: Path, tmp_path: Path) -> None:
    with pytest.raises(CliError) as info:
        decompress(coded / "client_0" / "round_3.fpz", tmp_path / "r3.safetensors")
    text = str(info.value)
    assert "\n" not in text and "round_3.fpz" in text
    assert "depends on" in text and "earlier rounds" in text
    assert "--keyframe-interval 1" in text and "decompress" in text
    assert list(tmp_path.iterdir()) == []
    # the first round is a keyframe: it decodes on its own
    assert decompress(coded / "client_0" / "round_1.fpz", tmp_path / "r1.safetensors") == 1


def test_keyframe_interval_1_files_decode_alone(tmp_path: Path) -> None:
    src = write_trace(tmp_path / "trace", clients=1)
    compress(src, tmp_path / "fpz", Policy.default("grad", mode="rel", eb=EB), keyframe_interval=1)
    assert decompress(tmp_path / "fpz" / "client_0" / "round_3.fpz", tmp_path / "r3.safetensors") == 1


def test_directory_decompress_is_all_or_nothing(coded: Path, tmp_path: Path) -> None:
    src = tmp_path / "fpz"
    for f in coded.rglob("*.fpz"):
        (src / f.parent.name).mkdir(parents=True, exist_ok=True)
        (src / f.parent.name / f.name).write_bytes(f.read_bytes())
    bad = src / "client_1" / "round_3.fpz"  # the very last payload decoded
    data = bytearray(bad.read_bytes())
    data[-3] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(CliError, match="round_3.fpz"):
        decompress(src, tmp_path / "back")
    assert not (tmp_path / "back").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fpz"]  # no temp directory left
    # an existing output directory keeps only what it had
    (tmp_path / "back").mkdir()
    (tmp_path / "back" / "keep.txt").write_text("mine")
    with pytest.raises(CliError):
        decompress(src, tmp_path / "back")
    assert [p.name for p in (tmp_path / "back").iterdir()] == ["keep.txt"]


def test_nonfinite_refuse_or_lossless(tmp_path: Path) -> None:
    x = torch.randn(64, 64)
    x[3, 5] = float("nan")
    x[7, 1] = float("inf")
    save_file({"w": x}, str(tmp_path / "nan.safetensors"))
    policy = Policy.default("grad", mode="rel", eb=EB)
    with pytest.raises(CliError, match="NaN/Inf"):
        compress(tmp_path / "nan.safetensors", tmp_path / "a.fpz", policy, nonfinite="refuse")
    assert not (tmp_path / "a.fpz").exists()
    with pytest.warns(UserWarning, match="losslessly"):
        compress(tmp_path / "nan.safetensors", tmp_path / "b.fpz", policy, nonfinite="lossless")
    decompress(tmp_path / "b.fpz", tmp_path / "b.safetensors")
    y = load_file(str(tmp_path / "b.safetensors"))["w"]
    assert torch.equal(torch.isnan(y), torch.isnan(x))
    assert torch.equal(y[~torch.isnan(x)], x[~torch.isnan(x)])
    with pytest.raises(CliError, match="nonfinite"):
        compress(tmp_path / "nan.safetensors", tmp_path / "c.fpz", policy, nonfinite="maybe")
    assert Policy(policy.rules, nonfinite="refuse").nonfinite == "error"


@pytest.mark.parametrize(
    ("codecs", "eb", "needle"),
    [("fast,bogus", "1e-2", "bogus"), ("fast", "1e-2,2", "below 1"), ("fast", "x", "--eb"),
     ("", "1e-2", "empty")],
)
def test_bench_codecs_validates_before_work(codecs: str, eb: str, needle: str, tmp_path: Path) -> None:
    args = Namespace(input=str(tmp_path / "no-such-trace"), codecs=codecs, eb=eb,
                     out=str(tmp_path / "out"), clients=None)
    with pytest.raises(CodecError, match=needle):  # not FileNotFoundError: checked first
        main_bench(args)
    assert list(tmp_path.iterdir()) == []


def test_crafted_payloads_refused_by_the_command(tmp_path: Path) -> None:
    entries = [[f"t{i}", "float32", [2**29 - 1], 0, 1, zlib.crc32(b"\x02")] for i in range(3)]
    import msgpack

    header = msgpack.packb({"s": None, "m": {}, "c": [["fast", {"mode": "rel", "eb": 0.01}]],
                            "t": entries}, use_bin_type=True)
    payload = struct.pack("<4sHHII", b"FPZ\x00", 1, 0, len(header), zlib.crc32(header)) + header
    (tmp_path / "big.fpz").write_bytes(payload + b"\x02" * 3)
    line = one_line_error(run_module("decompress", tmp_path / "big.fpz", tmp_path / "o.safetensors"))
    assert "max_total_bytes" in line and "big.fpz" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.fpz"]


def test_unreadable_safetensors_is_one_line(tmp_path: Path) -> None:
    for name, data in {"short": b"\x01", "len": struct.pack("<Q", 2**40) + b"{}",
                       "offsets": struct.pack("<Q", 60) + b'{"w":{"dtype":"F32","shape":[4],'
                                                         b'"data_offsets":[0,99]}}'.ljust(60)}.items():
        (tmp_path / f"{name}.safetensors").write_bytes(data)
        with pytest.raises(CliError, match="cannot read safetensors") as info:
            compress(tmp_path / f"{name}.safetensors", tmp_path / "o.fpz", Policy.lossless())
        assert "\n" not in str(info.value)
    assert not (tmp_path / "o.fpz").exists()
