"""Scalar quantization of stored vectors: a few bits per value, one codebook per dimension.

A compact store cannot afford 16 bits per value, and random projections lose NAIT-C and RDS+
(bench/compact_store.py). Quantizing every dimension on its own keeps the store's space (no rotation:
NAIT-C's per-dimension z-scoring and massive-dimension masks still apply) and turns the error into
small, independent noise per value, which averages out in the dot products every forward scorer takes.

Each dimension ``j`` of a file gets ``K = 2**bits`` levels fitted on the file's own rows, so a file is
decoded by itself and the same rows always give the same codes: up to 4 bits equal-mass bins refined by
Lloyd iterations (a level is the mean of the values it represents, a threshold the midpoint of two
levels); at 8 bits an even grid from the dimension's minimum to its maximum. A dimension with at most ``K`` distinct values is reconstructed exactly. Codes are
packed ``8 / bits`` to a byte; decoding looks a whole byte up at once ([bytes, 256, 8 / bits] table).

A few dimensions per layer spread 10-150x wider than the layer's median dimension (the attention sink's
share of a token mean, which varies as 1/length; SmolLM2-135M has one or two per layer). NAIT's raw
score rides on them, and a handful of levels cannot order them finely: they are kept exact (float16)
beside the codes (:func:`outlier_dims`).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BITS = (1, 2, 4, 8)
FLOAT16_SAFE = 60_000.0  # float16 tops out at 65,504
# The RDS+ embedding is one layer of a row: 8 bits keep RDS+'s top 10 % (4 bits lost 7 % of it).
EMBEDDING_BITS = 8
UNIFORM_BITS = 8  # 256 levels: an even grid from the dimension's minimum to its maximum, no fitting
LLOYD_ITERATIONS = 40  # each is one binary search per threshold: cheap next to the sort
DECODE_BYTES = 512  # byte positions decoded per step: their [512, 256] table records stay in cache
OUTLIER_RATIO = 8.0  # a dimension whose SD is this many times its layer's median SD is kept exact
OUTLIER_SHARE = 0.01  # at most this share of a layer's dimensions (and at least one) kept exact
FIT_DIMS = 4096  # dimensions fitted per step: bounds the float64 cumulative sums


class QuantizationError(ValueError):
    """Values that cannot be quantized (non-finite, wrong shape) or a codebook that does not fit them."""


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise QuantizationError(f"bits must be one of {BITS}, got {bits}")


def fit_levels(values: np.ndarray, bits: int, iterations: int = LLOYD_ITERATIONS) -> np.ndarray:
    """[D, 2**bits] ascending float32 levels per dimension of ``values`` [n, D] (``FIT_DIMS`` dimensions at a
    time, so a wide shard needs a few hundred MB, not a float64 copy of itself)."""
    _check_bits(bits)
    values = np.asarray(values)
    if values.ndim != 2 or len(values) == 0:
        raise QuantizationError(f"expected a non-empty [rows, dims] array, got shape {values.shape}")
    if bits == UNIFORM_BITS:
        if not np.isfinite(values).all():
            raise QuantizationError("values to quantize hold NaN or inf")
        return _uniform_grid(values.min(axis=0).astype(np.float32), values.max(axis=0).astype(np.float32))
    return np.concatenate([_fit_block(values[:, start:start + FIT_DIMS], bits, iterations)
                           for start in range(0, values.shape[1], FIT_DIMS)])


def _fit_block(values: np.ndarray, bits: int, iterations: int) -> np.ndarray:
    """Lloyd's algorithm on each column's sorted values: a bin is a contiguous run of them, so a level is a
    difference of cumulative sums over the run and a threshold's run boundary one binary search."""
    import torch

    block = np.asarray(values, np.float32)
    if not np.isfinite(block).all():
        raise QuantizationError("values to quantize hold NaN or inf")
    k, n = 2 ** bits, len(block)
    ordered = np.ascontiguousarray(np.sort(block, axis=0).T)  # [D, n]
    cumulative = np.zeros((len(ordered), n + 1), np.float64)
    np.cumsum(ordered, axis=1, dtype=np.float64, out=cumulative[:, 1:])
    rows = np.arange(len(ordered))[:, None]
    # Equal-mass start: the k quantile bins (every bin non-empty while n >= k).
    edges = np.linspace(0, n, k + 1).round().astype(np.int64)[None, :].repeat(len(ordered), 0)
    levels = np.zeros((len(ordered), k), np.float64)
    for step in range(iterations + 1):
        counts = np.diff(edges, axis=1)
        sums = cumulative[rows, edges[:, 1:]] - cumulative[rows, edges[:, :-1]]
        levels = np.where(counts > 0, sums / np.maximum(counts, 1), levels if step else ordered[rows, np.minimum(edges[:, :-1], n - 1)])
        levels = np.maximum.accumulate(levels, axis=1)  # an empty bin keeps its neighbour's level: still ascending
        if step == iterations:
            break
        inner = torch.searchsorted(torch.from_numpy(ordered), _thresholds(levels), right=True).numpy()
        edges = np.concatenate([np.zeros((len(ordered), 1), np.int64), inner, np.full((len(ordered), 1), n)], axis=1)
    return levels.astype(np.float32)


def _thresholds(levels: np.ndarray):
    """[D, K - 1] float32 torch tensor: the midpoints between a dimension's adjacent levels."""
    import torch

    return torch.from_numpy(np.ascontiguousarray((levels[:, 1:] + levels[:, :-1]) / 2, np.float32))


def encode(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """[n, D] uint8 codes: the index of each value's nearest level of its dimension."""
    import torch

    values = np.asarray(values, np.float32)
    if values.ndim != 2 or values.shape[1] != levels.shape[0]:
        raise QuantizationError(f"values of shape {values.shape} do not match a codebook of {levels.shape[0]} dims")
    if not np.isfinite(values).all():
        raise QuantizationError("values to quantize hold NaN or inf")
    by_dim = torch.from_numpy(np.ascontiguousarray(values.T))  # [D, n]
    codes = torch.searchsorted(_thresholds(levels), by_dim, right=False)
    return codes.T.numpy().astype(np.uint8)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """[n, D] codes -> [n, ceil(D * bits / 8)] bytes, dimension 0 in the lowest bits of byte 0."""
    _check_bits(bits)
    per_byte = 8 // bits
    n, dims = codes.shape
    padded = np.zeros((n, -(-dims // per_byte) * per_byte), np.uint8)
    padded[:, :dims] = codes
    grouped = padded.reshape(n, -1, per_byte)
    out = np.zeros(grouped.shape[:2], np.uint8)
    for slot in range(per_byte):
        out |= grouped[:, :, slot] << (slot * bits)
    return out


def byte_table(levels: np.ndarray, bits: int, dtype=np.float16) -> np.ndarray:
    """[bytes, 256, 8 / bits]: the values of the dimensions one packed byte holds, for each byte value."""
    _check_bits(bits)
    per_byte = 8 // bits
    dims, k = levels.shape
    padded = np.zeros((-(-dims // per_byte) * per_byte, k), np.float32)
    padded[:dims] = levels
    grouped = padded.reshape(-1, per_byte, k)  # [bytes, slot, level]
    byte_values = np.arange(256)
    slot_codes = (byte_values[:, None] >> (np.arange(per_byte)[None, :] * bits)) & (k - 1)  # [256, slot]
    table = grouped[:, np.arange(per_byte)[None, :], slot_codes]  # [bytes, 256, slot]
    return table.astype(dtype)


def decode(packed: np.ndarray, table: np.ndarray, dims: int) -> np.ndarray:
    """[n, bytes] packed codes -> [n, dims] values (the table's dtype). Each byte's values are one fixed-size
    record of the table, so a byte costs one ``take``; ``DECODE_BYTES`` byte positions at a time, so the part
    of the table they look up stays in cache (4x faster than row blocks over the whole table)."""
    n, width = packed.shape
    if table.shape[0] != width:
        raise QuantizationError(f"{width} bytes per row do not match a codebook for {table.shape[0]}")
    per_byte = table.shape[2]
    record = np.dtype(f"V{per_byte * table.dtype.itemsize}")
    records = np.ascontiguousarray(table).reshape(width * 256, per_byte).view(record).ravel()
    out = np.empty((n, width), record)
    for start in range(0, width, DECODE_BYTES):
        stop = min(width, start + DECODE_BYTES)
        out[:, start:stop] = _look_up(packed, records, start, stop)
    return out.view(table.dtype).reshape(n, width * per_byte)[:, :dims]


def _look_up(packed: np.ndarray, records: np.ndarray, start: int, stop: int, first: int = 0) -> np.ndarray:
    """[n, stop - start]: the table record of each row's byte at positions ``first + start .. first + stop``;
    ``records`` holds 256 records per byte position, counted from ``first``."""
    index = packed[:, first + start:first + stop].astype(np.int32)
    index += (np.arange(start, stop, dtype=np.int32) * 256)[None, :]
    return np.take(records, index)


def quantize(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed codes [n, bytes], levels [D, 2**bits]) of ``values`` [n, D]."""
    levels = fit_levels(values, bits)
    return pack(encode(values, levels), bits), levels


def outlier_dims(values: np.ndarray, groups: int, ratio: float = OUTLIER_RATIO, share: float = OUTLIER_SHARE) -> np.ndarray:
    """Ascending flat indices of ``values`` [n, groups * d] whose SD is above ``ratio`` x the median SD of
    their group (a layer), the widest first up to ``share`` of the group's dimensions (at least one)."""
    n, dims = values.shape
    if dims % groups:
        raise QuantizationError(f"{dims} dimensions do not split into {groups} layers")
    width = dims // groups
    sd = np.asarray(values, np.float32).reshape(n, groups, width).std(axis=0, dtype=np.float64)
    cap = max(1, int(share * width))
    chosen = []
    for group, row in enumerate(sd):
        wide = np.flatnonzero(row > ratio * np.median(row))
        wide = wide[np.argsort(-row[wide], kind="stable")[:cap]]
        chosen.append(group * width + np.sort(wide))
    return np.concatenate(chosen).astype(np.int64)


def levels_to_metadata(levels: np.ndarray, bits: int) -> dict:
    """The codebook as a file's JSON metadata records it (base64): up to 4 bits the levels in float16 (a
    decoded token mean is float16 anyway; float32 where a level does not fit), at 8 bits the uniform grid's
    ends (a codebook of 256 levels per dimension would outweigh a small shard's codes)."""
    if bits == UNIFORM_BITS:
        ends = np.stack([levels[:, 0], levels[:, -1]]).astype("<f4")
        return {"bits": bits, "dims": int(levels.shape[0]), "grid_ends": _b64(ends)}
    dtype = "<f2" if np.abs(levels).max(initial=0.0) < FLOAT16_SAFE else "<f4"
    return {"bits": bits, "dims": int(levels.shape[0]), "levels_dtype": np.dtype(dtype).name, "levels": _b64(levels.astype(dtype))}


def levels_from_metadata(meta: dict) -> tuple[np.ndarray, int]:
    bits, dims = int(meta["bits"]), int(meta["dims"])
    _check_bits(bits)
    if bits == UNIFORM_BITS:
        ends = np.frombuffer(base64.b64decode(meta["grid_ends"]), "<f4")
        if ends.size != 2 * dims:
            raise QuantizationError(f"a grid of {ends.size // 2} dims does not hold {dims}")
        return _uniform_grid(ends[:dims], ends[dims:]), bits
    levels = np.frombuffer(base64.b64decode(meta["levels"]), np.dtype(meta.get("levels_dtype", "float32")).newbyteorder("<"))
    if levels.size != dims * 2 ** bits:
        raise QuantizationError(f"a codebook of {levels.size} values does not hold {dims} dims x {2 ** bits} levels")
    return levels.astype(np.float32).reshape(dims, 2 ** bits), bits


def _uniform_grid(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """[D, 256] evenly spaced levels from ``low`` to ``high`` per dimension."""
    steps = np.arange(2 ** UNIFORM_BITS, dtype=np.float32) / (2 ** UNIFORM_BITS - 1)
    return (low[:, None] + (high - low)[:, None] * steps[None, :]).astype(np.float32)


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values).tobytes()).decode("ascii")


def unpack_codes(packed: np.ndarray, dims: Sequence[int], bits: int) -> np.ndarray:
    """[n, len(dims)] codes of the given dimensions, read out of the packed bytes."""
    per_byte = 8 // bits
    dims = np.asarray(dims, np.int64)
    return (packed[:, dims // per_byte] >> ((dims % per_byte) * bits).astype(np.uint8)) & (2 ** bits - 1)


@dataclass
class CodedBlock:
    """One shard's quantized vectors as stored: the packed codes, the codebook and the outlier dimensions'
    exact values, with the shape each row decodes to. Linear scorers take dot products from it directly
    (:meth:`layer_dots`); anything else decodes it."""

    packed: np.ndarray  # [n, bytes] uint8
    levels: np.ndarray  # [D, 2**bits] float32
    bits: int
    exact_dims: list[int]
    exact: np.ndarray | None  # [n, len(exact_dims)]
    row_shape: tuple[int, ...]  # (L, d) or (d,)
    dtype: type = np.float16

    def __len__(self) -> int:
        return len(self.packed)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.packed), *self.row_shape)

    def decode(self) -> np.ndarray:
        """The values, [n, *row_shape], in ``dtype`` (what a decoded read of the store returns)."""
        values = decode(self.packed, byte_table(self.levels, self.bits, self.dtype), self.levels.shape[0])
        if self.exact_dims:
            values[:, self.exact_dims] = self.exact
        return values.reshape(self.shape)

    def layer_dots(self, directions: np.ndarray) -> np.ndarray:
        """Each row's layer ``l`` dotted with ``directions[..., l, :]`` ([L, d] -> [n, L]; [F, L, d] -> [n, F, L]),
        float64, read from the codes: per layer a table of each byte value's contribution (its dimensions'
        levels times the directions), then one lookup per stored byte, summed. Equal to decoding then
        multiplying (the levels rounded to ``dtype`` as a decode would), without writing the decoded values:
        3-4x faster on a wide store."""
        layers, width = self.row_shape
        single = directions.ndim == 2
        weights = np.ascontiguousarray(directions[None] if single else directions, np.float32)  # [F, L, d]
        if weights.shape[1:] != (layers, width):
            raise QuantizationError(f"directions of shape {directions.shape} for rows of shape {self.row_shape}")
        per_byte = 8 // self.bits
        if width % per_byte:  # a byte would hold two layers' dimensions: decode instead
            values = self.decode().astype(np.float32)
            dots = np.einsum("nld,fld->nfl", values, weights).astype(np.float64)
            return dots[:, 0] if single else dots
        count, layer_bytes = len(weights), width // per_byte
        levels = self.levels.astype(self.dtype).astype(np.float32)  # what a decode would return
        record = np.dtype(f"V{4 * count}")
        out = np.zeros((len(self), count, layers), np.float64)
        for layer in range(layers):
            table = byte_table(levels[layer * width:(layer + 1) * width], self.bits, np.float32)  # [bytes, 256, slot]
            slots = weights[:, layer].reshape(count, layer_bytes, per_byte)
            contribution = np.ascontiguousarray(np.einsum("bvs,fbs->bvf", table, slots))  # [bytes, 256, F]
            records = contribution.reshape(layer_bytes * 256, count).view(record).ravel()
            first = layer * layer_bytes
            for start in range(0, layer_bytes, DECODE_BYTES):
                stop = min(layer_bytes, start + DECODE_BYTES)
                looked_up = _look_up(self.packed, records, start, stop, first)
                looked_up = looked_up.view(np.float32).reshape(len(self), stop - start, count)
                out[:, :, layer] += looked_up.sum(axis=1, dtype=np.float64)
        if self.exact_dims:
            # The outlier dimensions hold their exact values, not their codes' levels.
            dims = np.asarray(self.exact_dims)
            coded = levels[dims[None, :], unpack_codes(self.packed, dims, self.bits).astype(np.int64)]
            difference = self.exact.astype(np.float32) - coded  # [n, E]
            flat_weights = weights.reshape(count, -1)[:, dims]  # [F, E]
            for position, dim in enumerate(dims):
                out[:, :, dim // width] += difference[:, position, None] * flat_weights[None, :, position]
        return out[:, 0] if single else out
