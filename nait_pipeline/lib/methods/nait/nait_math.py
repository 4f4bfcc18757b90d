"""NAIT: capability directions from in-domain activations, and pool scores by projection.

Spec: methods.md section 4 with the section 11 corrections.
- drift per example and layer: R1 = last - first token, R2 = token mean - first token (default),
  R3 = token mean;
- direction per layer: first principal component of the mean-centred drifts (unit norm), its sign
  fixed so that it points along the mean drift;
- score of a pool example: sum over layers of (token-mean activation . direction), the published
  dot product; per-layer z-scoring, cosine and layer subsets are documented variants.
"""

from __future__ import annotations

import warnings

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DRIFTS = ("R1", "R2", "R3")
AGGREGATIONS = ("sum", "zscore", "cosine")


class NaitInputError(ValueError):
    """Unusable in-domain data (too few rows, no variance, non-finite activations)."""


@dataclass(frozen=True)
class Directions:
    vectors: np.ndarray  # [L, d] unit rows
    explained_variance_ratio: np.ndarray  # [L]
    sign_flipped: np.ndarray  # [L] bool: the raw PC pointed against the mean drift
    n_rows: int


def drift(layer_mean: np.ndarray, first_token: np.ndarray, last_token: np.ndarray | None, variant: str) -> np.ndarray:
    """Per-example per-layer activation drift, [n, L, d]."""
    if variant == "R1":
        if last_token is None:
            raise NaitInputError("drift R1 needs last-token states; featurize targets with keep_last_token")
        return last_token - first_token
    if variant == "R2":
        return layer_mean - first_token
    if variant == "R3":
        return layer_mean
    raise NaitInputError(f"drift must be one of {DRIFTS}, got {variant!r}")


def fit_directions(drifts: np.ndarray, min_rows: int = 2, capability: str = "") -> Directions:
    """First principal component per layer, sign-fixed by the mean drift."""
    n = drifts.shape[0]
    label = f" for capability {capability!r}" if capability else ""
    if n == 0:
        raise NaitInputError(f"the in-domain set{label} is empty: materialize target_sets or add target rows")
    if n < max(min_rows, 2):
        raise NaitInputError(f"the in-domain set{label} has {n} row(s); PCA needs at least {max(min_rows, 2)}")
    x = drifts.astype(np.float64)
    mean = x.mean(axis=0)  # [L, d]
    centred = x - mean
    n_layers = x.shape[1]
    vectors = np.zeros((n_layers, x.shape[2]))
    ratio = np.zeros(n_layers)
    flipped = np.zeros(n_layers, bool)
    for layer in range(n_layers):
        _, singular, vt = np.linalg.svd(centred[:, layer, :], full_matrices=False)
        total = float((singular**2).sum())
        if total <= 0.0:
            raise NaitInputError(f"layer {layer + 1}{label}: every in-domain drift is identical, no direction")
        direction = vt[0]
        if float(mean[layer] @ direction) < 0.0:
            direction, flipped[layer] = -direction, True
        vectors[layer], ratio[layer] = direction, singular[0] ** 2 / total
    return Directions(vectors=vectors, explained_variance_ratio=ratio, sign_flipped=flipped, n_rows=n)


def sink_alignment(directions: np.ndarray, first_token: np.ndarray) -> np.ndarray:
    """Per layer |cos(v_l, f_l)|, f_l the mean first-token state of the in-domain rows ([n, L, d] in).

    Every rendered example starts with the same chat prefix whose first token carries a massive
    activation; a direction aligned with it (near 1) measures how much of that constant prefix a token
    mean holds, i.e. 1/length, not the capability (selection-quality.md section 1)."""
    f = first_token.astype(np.float64).mean(axis=0)
    v = directions.astype(np.float64)
    norms = np.linalg.norm(v, axis=1) * np.linalg.norm(f, axis=1)
    return np.abs((v * f).sum(axis=1)) / np.where(norms > 0, norms, 1.0)


def layer_projections(layer_mean: np.ndarray, directions: np.ndarray, chunk: int = 256) -> np.ndarray:
    """a_l(y) . v_l for every example and layer: [N, L] float64. ``layer_mean`` may be float16 (as
    stored); it is widened to float32 a small chunk at a time into one reused buffer (256 rows: ~17 MB,
    cache-sized; a fresh buffer per chunk costs more in page faults than the widening itself), and each
    row's L dot products are one batched matmul (torch's einsum of this pattern copied the chunk: 10x
    slower here). A quantized shard (a ``CodedBlock``) takes its dot products from the codes."""
    import torch

    from nait_pipeline.lib.features.quantize import CodedBlock

    if isinstance(layer_mean, CodedBlock):
        return layer_mean.layer_dots(directions)

    out = np.empty((layer_mean.shape[0], layer_mean.shape[1]), np.float64)
    v = np.ascontiguousarray(directions, np.float32)[None, :, :, None]  # [1, L, d, 1]
    buffer = torch.empty((min(chunk, len(layer_mean)), *layer_mean.shape[1:]), dtype=torch.float32)
    for start in range(0, len(layer_mean), chunk):
        rows = layer_mean[start : start + chunk]
        widened = buffer[: len(rows)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only Arrow buffer: torch only reads it
            widened.copy_(torch.from_numpy(rows))  # F16C: ~4x numpy's astype
        out[start : start + len(rows)] = np.matmul(widened.numpy()[:, :, None, :], v)[:, :, 0, 0]
    return out


def layer_norms(layer_mean: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """|a_l(y)| for every example and layer: [N, L], widened from the stored dtype a chunk at a time."""
    from nait_pipeline.lib.features.feature_store import to_float32

    return np.concatenate([np.linalg.norm(to_float32(layer_mean[s : s + chunk]), axis=2)
                           for s in range(0, len(layer_mean), chunk)]) if len(layer_mean) else \
        np.zeros(layer_mean.shape[:2])


def aggregate(projections: np.ndarray, aggregation: str = "sum", layers: Sequence[int] | None = None,
              layer_norms: np.ndarray | None = None) -> np.ndarray:
    """Combine per-layer projections into one score per example.

    sum:    the published score, sum_l a_l . v_l.
    zscore: each layer's projection standardised over the pool first, so late layers with large
            activations do not dominate.
    cosine: a_l . v_l / |a_l| per layer (needs ``layer_norms`` = |a_l|, [N, L]).
    ``layers`` (1-based) restricts the sum to a subset of layers.
    """
    columns = np.arange(projections.shape[1]) if layers is None else np.asarray(layers) - 1
    if len(columns) == 0 or columns.min() < 0 or columns.max() >= projections.shape[1]:
        raise NaitInputError(f"layers must be within 1..{projections.shape[1]}, got {layers}")
    selected = projections[:, columns]
    if aggregation == "sum":
        return selected.sum(axis=1)
    if aggregation == "zscore":
        std = selected.std(axis=0)
        std[std == 0] = 1.0
        return ((selected - selected.mean(axis=0)) / std).sum(axis=1)
    if aggregation == "cosine":
        if layer_norms is None:
            raise NaitInputError("cosine aggregation needs the per-layer activation norms")
        norms = np.maximum(layer_norms[:, columns], 1e-12)
        return (selected / norms).sum(axis=1)
    raise NaitInputError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def require_finite_layers(values: np.ndarray, ids: Sequence[str], what: str) -> None:
    """Fail naming the examples and layers of a non-finite value in an [n, L, ...] array: one bad
    value must be reported where it is, before a pool-wide statistic spreads it to every row."""
    bad = ~np.isfinite(values.reshape(values.shape[0], values.shape[1], -1)).all(axis=2)
    if bad.any():
        rows, layers = np.nonzero(bad)
        named = sorted({ids[r] for r in rows})[:20]
        raise NaitInputError(f"non-finite {what} for {len(set(rows.tolist()))} example(s) {named} "
                             f"in layer(s) {sorted({int(l) + 1 for l in layers})[:20]}")
