"""The paper's cross-round predictor: normalized-EMA magnitude times a predicted sign.

Kept as an option of ``grad`` and measured in the ablation benchmark. Both sides build the
prediction with ``update_memory`` from the previous *reconstruction* and the transmitted side
information, so encoder and decoder agree by construction.

* magnitude: ``Z = (|Ghat_{t-1}| - mu_{t-1}) / sd_{t-1}``; memory ``M <- (1-a) M + a Z`` on
  predictable elements; prediction magnitude ``|M * sd_t + mu_t|``.
* sign, ``kernel`` model: per kernel, the majority sign of the current tensor when at least a
  fraction ``(1 + tau) / 2`` of its entries share it (zeros join the majority), sent as a two-level
  bitmap (predictable kernels, then their sign).
* sign, ``oscillation`` model: ``-sign(Ghat_{t-1})`` (gradients that flip between rounds).
* ``auto`` picks, per layer, the model with the smaller residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contexts import group_view
from .errors import PayloadError
from .frame import FrameReader, FrameWriter, zstd_compress, zstd_decompress

SIGN_MODELS = ("kernel", "oscillation", "auto")
_KERNEL, _OSC = 0, 1


@dataclass
class PredictorSide:
    mu: float
    sd: float
    sign_model: int
    predictable: np.ndarray | None = None  # bool per kernel (kernel model)
    dominant_neg: np.ndarray | None = None  # bool per predictable kernel
    memory: np.ndarray | None = None  # encoder's updated memory (not transmitted)


def _stats(a: np.ndarray) -> tuple[float, float]:
    m = np.abs(a.astype(np.float64))
    return float(np.float32(m.mean())), float(np.float32(m.std()))


def predict(
    x: np.ndarray,
    prev: np.ndarray,
    memory: np.ndarray | None,
    mode: str,
    alpha: float,
    tau: float,
) -> tuple[PredictorSide, np.ndarray]:
    """Encoder side: choose the side information, then predict exactly as the decoder will."""
    shape = tuple(x.shape)
    mu, sd = _stats(x)
    groups, k = group_view(shape)
    g = x.reshape(groups, k)
    pos, neg = (g > 0).sum(axis=1), (g < 0).sum(axis=1)
    zeros = k - pos - neg
    majority = np.maximum(pos, neg) + zeros
    predictable = (2.0 * majority / k - 1.0) >= tau
    dominant_neg = (neg > pos)[predictable]
    candidates = []
    if mode in ("kernel", "auto"):
        candidates.append(PredictorSide(mu, sd, _KERNEL, predictable, dominant_neg))
    if mode in ("oscillation", "auto"):
        candidates.append(PredictorSide(mu, sd, _OSC))
    best = None
    for side in candidates:
        pred, mem = update_memory(side, prev, memory, shape, alpha)
        cost = float(np.abs(x.reshape(-1).astype(np.float64) - pred).sum())
        if best is None or cost < best[0]:
            side.memory = mem
            best = (cost, side, pred)
    return best[1], best[2]


def update_memory(
    side: PredictorSide,
    prev: np.ndarray,
    memory: np.ndarray | None,
    shape: tuple[int, ...],
    alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Both sides: (prediction in float64, updated memory) from reconstruction + side info."""
    n = prev.size
    mu_p, sd_p = _stats(prev)
    z = np.abs(prev.astype(np.float64)) - mu_p
    if sd_p > 1e-8:
        z /= sd_p
    mem = np.zeros(n, dtype=np.float64) if memory is None else memory.astype(np.float64)
    if side.sign_model == _KERNEL:
        groups, k = group_view(shape)
        mask = np.repeat(side.predictable, k)
        sign_k = np.where(side.dominant_neg, -1.0, 1.0)
        sign = np.zeros(groups)
        sign[side.predictable] = sign_k
        sign = np.repeat(sign, k)
    else:
        mask = prev != 0
        sign = -np.sign(prev.astype(np.float64))
    mem[mask] = (1.0 - alpha) * mem[mask] + alpha * z[mask]
    pred = np.zeros(n, dtype=np.float64)
    pred[mask] = sign[mask] * np.abs(mem[mask] * side.sd + side.mu)
    return pred, mem.astype(np.float32)


def write_side(w: FrameWriter, side: PredictorSide) -> None:
    w.pack("ffB", side.mu, side.sd, side.sign_model)
    if side.sign_model == _KERNEL:
        bits = np.concatenate([side.predictable, side.dominant_neg]).astype(np.uint8)
        w.pack("I", bits.size)
        w.section(zstd_compress(np.packbits(bits).tobytes()))


def read_side(r: FrameReader, shape: tuple[int, ...]) -> PredictorSide:
    mu, sd, model = r.unpack("ffB")
    if model not in (_KERNEL, _OSC) or not (np.isfinite(mu) and np.isfinite(sd)):
        raise PayloadError("bad predictor side information")
    side = PredictorSide(mu, sd, model)
    if model == _KERNEL:
        groups, _ = group_view(shape)
        (nbits,) = r.unpack("I")
        raw = zstd_decompress(r.section(), (nbits + 7) // 8)
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:nbits].astype(bool)
        if nbits < groups:
            raise PayloadError("kernel bitmap is too short")
        side.predictable = bits[:groups]
        n_pred = int(side.predictable.sum())
        if nbits != groups + n_pred:
            raise PayloadError("kernel bitmap has the wrong length")
        side.dominant_neg = bits[groups:]
    return side
