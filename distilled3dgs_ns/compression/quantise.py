"""Fixed-point fields of the compact file (format 2): what each attribute is rounded to, and Morton order.

Format 1 stored every attribute in float16 (about 60 bytes per Gaussian, 2.5x an SPZ file). Nearly all of a splat's
bytes buy nothing a render shows: on the demo student, 12-bit positions, 8-bit scales, opacities and colours and 7-bit
rotations together cost 0.02 dB against float32. What costs quality is the SH rest (45 numbers a Gaussian), which the
file takes from a codebook trained and then fine-tuned (``finetune``). The fields here:

- positions: ``bits`` per axis in the bounding box, stored as the differences of the sorted Morton codes (neighbours
  share their high bits, which the entropy coder then removes: 0.9 bytes a Gaussian less than the raw integers);
- log scales, opacity logits and SH DC: 8 bits, linear over the range of the values (one range for the three scale
  axes, one per colour channel);
- rotations: 3 bytes, smallest three (index of the largest component, the other three at 7 bits with zero exact,
  as SPZ v3 does at 10);
- SH rest: int8, linear over ``[-m, m]`` with ``m`` the largest magnitude of each coefficient (over the codebook and
  the unquantised rows).

Ranges are float32. Decoding then encoding with the same ``Quantisation`` gives back the same integers, so Gaussians
that ``encode.pack`` returns (which carry theirs) are written and read back unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_POSITION_BITS = 12
MAX_POSITION_BITS = 21
"""Three axes of 21 bits fill a 64-bit Morton code."""
POSITION_STEP_OF_SMALL = 1 / 16
"""The position step is at most this share of the 1st-percentile Gaussian size (its largest axis): 12 bits lost
nothing measurable on the demo student (-0.00 dB against 16 bits), where this rule gives 12; lego-100's teacher gets
14."""
ROTATION_BITS = 7
SQRT_HALF = math.sqrt(0.5)


@dataclass(frozen=True)
class Quantisation:
    """Everything a reader needs besides the integers: the header's ``quantisation`` object."""

    position_bits: int
    position_low: tuple[float, float, float]
    position_high: tuple[float, float, float]
    scale_range: tuple[float, float]
    opacity_range: tuple[float, float]
    dc_low: tuple[float, float, float]
    dc_high: tuple[float, float, float]
    sh_max: tuple[float, ...]
    """The largest magnitude of each SH rest value (``3 (K - 1)``, coefficient-major, channels inner)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, sh_values: int) -> Quantisation:
        """Parse and validate the header's object; raises ``ValueError`` saying what is wrong."""
        if not isinstance(data, dict) or set(data) != {f for f in cls.__dataclass_fields__}:
            raise ValueError(f"quantisation must hold {sorted(cls.__dataclass_fields__)}")
        bits = data["position_bits"]
        if not isinstance(bits, int) or not MIN_POSITION_BITS <= bits <= MAX_POSITION_BITS:
            raise ValueError(f"position_bits {bits!r} is outside {MIN_POSITION_BITS}..{MAX_POSITION_BITS}")
        lengths = {"position_low": 3, "position_high": 3, "scale_range": 2, "opacity_range": 2, "dc_low": 3,
                   "dc_high": 3, "sh_max": sh_values}  # fmt: skip
        for name, length in lengths.items():
            value = data[name]
            if (
                not isinstance(value, list)
                or len(value) != length
                or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            ):
                raise ValueError(f"{name} must be a list of {length} finite numbers, got {value!r}")
        ends = [("position_low", "position_high"), ("dc_low", "dc_high")]
        pairs = [*(pair for low, high in ends for pair in zip(data[low], data[high], strict=True)),
                 data["scale_range"], data["opacity_range"]]  # fmt: skip
        if any(low > high for low, high in pairs):
            raise ValueError("a range has its low end above its high end")
        if any(value < 0 for value in data["sh_max"]):
            raise ValueError("an SH magnitude is negative")
        return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in data.items()})


def _f32(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float32).reshape(-1))


def position_bits(means: np.ndarray, log_scales: np.ndarray) -> int:
    """Bits per axis for these positions (see ``POSITION_STEP_OF_SMALL``), never finer than float32 can hold them."""
    if len(means) == 0:
        return MIN_POSITION_BITS
    extent = float((means.max(axis=0) - means.min(axis=0)).max())
    small = float(np.quantile(np.exp(log_scales.max(axis=1)), 0.01)) * POSITION_STEP_OF_SMALL
    float32_step = 4 * float(np.abs(means).max()) * 2.0**-23
    step = max(small, float32_step)
    if extent <= 0 or step <= 0:
        return MIN_POSITION_BITS
    return int(np.clip(math.ceil(math.log2(extent / step + 1)), MIN_POSITION_BITS, MAX_POSITION_BITS))


def fit(fields: dict[str, np.ndarray]) -> Quantisation:
    """Ranges and steps for these fields (float32 arrays keyed like ``CompactGaussians``; ``sh`` holds every SH rest
    value the file stores, codebook and unquantised rows, ``[R, 3 (K - 1)]``)."""
    means, scales, opacities, dc, sh = (fields[k] for k in ("means", "scales", "opacities", "features_dc", "sh"))

    def low_high(values: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
        if values.size == 0:
            zeros = np.zeros(values.shape[1] if axis == 0 else 1, dtype=np.float32)
            return zeros, zeros
        return values.min(axis=axis), values.max(axis=axis)

    position = low_high(means, 0)
    scale = low_high(scales, None)
    opacity = low_high(opacities, None)
    colour = low_high(dc, 0)
    sh_max = np.abs(sh).max(axis=0) if len(sh) else np.zeros(sh.shape[1], dtype=np.float32)
    return Quantisation(
        position_bits=position_bits(means, scales),
        position_low=_f32(position[0]),  # type: ignore[arg-type]
        position_high=_f32(position[1]),  # type: ignore[arg-type]
        scale_range=_f32(np.array([scale[0], scale[1]])),  # type: ignore[arg-type]
        opacity_range=_f32(np.array([opacity[0], opacity[1]])),  # type: ignore[arg-type]
        dc_low=_f32(colour[0]),  # type: ignore[arg-type]
        dc_high=_f32(colour[1]),  # type: ignore[arg-type]
        sh_max=_f32(sh_max),
    )


# -------------------------------------------------------------------------------------------------- linear fields


def _levels(bits: int) -> int:
    return (1 << bits) - 1


def encode_linear(values: np.ndarray, low: Any, high: Any, bits: int) -> np.ndarray:
    """Integers in ``0 .. 2^bits - 1`` (int64), linear over ``[low, high]`` (per column when given per column)."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    span = np.where(high > low, high - low, 1.0)
    scaled = (values.astype(np.float64) - low) / span * _levels(bits)
    return np.clip(np.round(scaled), 0, _levels(bits)).astype(np.int64)


def decode_linear(integers: np.ndarray, low: Any, high: Any, bits: int) -> np.ndarray:
    """Float32 values; the top integer decodes to ``high`` exactly."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return (low + integers.astype(np.float64) / _levels(bits) * (high - low)).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ positions


def _spread(values: np.ndarray, bits: int) -> np.ndarray:
    """The bits of each value moved to every third bit (bit i to bit 3i)."""
    out = np.zeros(values.shape, dtype=np.uint64)
    for bit in range(bits):
        out |= ((values >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit)
    return out


def _gather(codes: np.ndarray, bits: int) -> np.ndarray:
    out = np.zeros(codes.shape, dtype=np.uint64)
    for bit in range(bits):
        out |= ((codes >> np.uint64(3 * bit)) & np.uint64(1)) << np.uint64(bit)
    return out


def morton_codes(cells: np.ndarray, bits: int) -> np.ndarray:
    """``[N]`` uint64 Morton codes of ``[N, 3]`` integer cells (x in the lowest bit of each triple)."""
    cells = cells.astype(np.uint64)
    return (
        _spread(cells[:, 0], bits)
        | (_spread(cells[:, 1], bits) << np.uint64(1))
        | (_spread(cells[:, 2], bits) << np.uint64(2))
    )


def position_codes(means: np.ndarray, q: Quantisation) -> np.ndarray:
    """``[N]`` Morton codes of the positions' cells; the file holds the Gaussians in their stable sort order."""
    return morton_codes(encode_linear(means, q.position_low, q.position_high, q.position_bits), q.position_bits)


def morton_cells(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of ``morton_codes``: ``[N, 3]`` int64 cells."""
    return np.stack([_gather(codes >> np.uint64(axis), bits) for axis in range(3)], axis=1).astype(np.int64)


# ------------------------------------------------------------------------------------------------------ rotations


ROTATION_HALF = (1 << (ROTATION_BITS - 1)) - 1
"""63: components are stored as ``63 + round(63 c / sqrt(1/2))``, so zero is exact (axis-aligned rotations stay so)."""


def encode_rotations(quats_wxyz: np.ndarray) -> np.ndarray:
    """``[N, 3]`` uint8: a 24-bit word holding the largest component's index (2 bits) and the three others, sign
    made positive on the largest, at ``ROTATION_BITS`` each (steps of sqrt(1/2) / 63).

    When two components nearly tie, rounding can leave a stored one above the left-out one recomputed from them; such
    a component is moved a step towards zero until it is below, so the decoded rotation encodes to the same bytes
    again (a step more error, on about 0.5% of random rotations).
    """
    q = quats_wxyz.astype(np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    rows = np.arange(len(q))
    largest = np.abs(q).argmax(axis=1)
    q = np.where((q[rows, largest] < 0)[:, None], -q, q)
    levels = np.clip(np.round(q / SQRT_HALF * ROTATION_HALF), -ROTATION_HALF, ROTATION_HALF).astype(np.int64)
    levels[rows, largest] = 0
    for _ in range(ROTATION_HALF):
        others = levels / ROTATION_HALF * SQRT_HALF
        left_out = np.sqrt(np.clip(1.0 - (others**2).sum(axis=1), 0.0, None))
        biggest = np.abs(levels).argmax(axis=1)
        above = np.abs(others[rows, biggest]) >= left_out - 1e-6
        if not above.any():
            break
        levels[rows[above], biggest[above]] -= np.sign(levels[rows[above], biggest[above]])
    word = largest.astype(np.uint32)
    for i in range(4):
        level = (levels[:, i] + ROTATION_HALF).astype(np.uint32)
        word = np.where(largest == i, word, (word << np.uint32(ROTATION_BITS)) | level)
    word <<= np.uint32(24 - 2 - 3 * ROTATION_BITS)
    return word.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].copy()


def decode_rotations(data: np.ndarray) -> np.ndarray:
    """``[N, 4]`` float32 unit quaternions (wxyz)."""
    word = np.zeros((len(data), 4), dtype=np.uint8)
    word[:, :3] = data
    word = word.view("<u4").reshape(-1) >> np.uint32(24 - 2 - 3 * ROTATION_BITS)
    largest = (word >> np.uint32(3 * ROTATION_BITS)).astype(np.int64)
    q = np.zeros((len(data), 4))
    mask = np.uint32(_levels(ROTATION_BITS))
    for i in (3, 2, 1, 0):
        value = ((word & mask).astype(np.float64) - ROTATION_HALF) / ROTATION_HALF * SQRT_HALF
        here = largest != i
        q[:, i] = np.where(here, value, 0.0)
        word = np.where(here, word >> np.uint32(ROTATION_BITS), word)
    rows = np.arange(len(q))
    q[rows, largest] = np.sqrt(np.clip(1.0 - (q**2).sum(axis=1), 0.0, None))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------- SH values


def encode_sh(values: np.ndarray, magnitude: tuple[float, ...]) -> np.ndarray:
    """``[R, 3 (K - 1)]`` int8 in ``-127 .. 127``, linear over ``[-m, m]`` per column."""
    m = np.asarray(magnitude, dtype=np.float64)
    safe = np.where(m > 0, m, 1.0)
    return np.clip(np.round(values.astype(np.float64) / safe * 127), -127, 127).astype(np.int8)


def decode_sh(integers: np.ndarray, magnitude: tuple[float, ...]) -> np.ndarray:
    return (integers.astype(np.float64) / 127 * np.asarray(magnitude, dtype=np.float64)).astype(np.float32)


def covers(quantisation: Quantisation, fields: dict[str, np.ndarray]) -> bool:
    """Whether every value of ``fields`` (as for ``fit``) lies in the ranges, so encoding clips nothing."""
    q = quantisation

    def inside(values: np.ndarray, low: Any, high: Any) -> bool:
        return values.size == 0 or bool(((values >= np.asarray(low)) & (values <= np.asarray(high))).all())

    return (
        inside(fields["means"], q.position_low, q.position_high)
        and inside(fields["scales"], *q.scale_range)
        and inside(fields["opacities"], *q.opacity_range)
        and inside(fields["features_dc"], q.dc_low, q.dc_high)
        and inside(np.abs(fields["sh"]), 0.0, q.sh_max)
    )
