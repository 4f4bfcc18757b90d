"""NAIT-C: NAIT that selects by capability, not by length (selection-quality.md sections 1-2).

Why: every rendered example starts with the same template prefix whose first token carries a massive
activation, so a stored token mean is ``m_l = (P/K)·pbar_l + (1 - P/K)·c_l``: a constant prefix term
weighted by 1/K plus the content. The published PC1-with-sign-rule direction is that prefix (sink)
axis, and its score ranks by length. The variants here work on the stored features alone, plus one
forward of the constant prefix:

1. clean        ``c_l = (K·m_l - S_l) / (K - P)``: the prefix's states removed exactly (``S_l`` is the
                sum of the P prefix states, identical for every example under causal attention);
2. mask         massive dimensions of the first-token state (|f| > 100 and > 1000 x the layer's median
                |f|, Sun et al. 2024), and any dimension whose cleaned value correlates with 1/K over
                the pool (|corr| > 0.5);
3. standardise  every kept dimension over the pool (z-scores); targets get the pool's transform;
4. direction    contrastive: ``w_l = mean_t z_tl - mean_pool z_l`` (= mean_t z_tl), unit norm, its sign
                right by construction; or shrinkage LDA ``Sigma_pool^-1 mean_t z_tl`` (Ledoit-Wolf shrunk
                covariance of a seeded pool sample);
                or the faithful PC1 of the in-domain z-features with the contrastive sign;
5. layer score  ``p_il = z_il · w_l``, standardised over the pool;
6. layer weight ``alpha_l = max(0, 2·AUC_l - 1)``, AUC_l the 5-fold held-out AUC of held-out in-domain
                rows against pool rows within ±15 % of their length (length-controlled separability);
                layers below ``min_auc`` (0.6) weigh 0;
7. score        ``s_i = sum_l alpha_l p~_il / sum_l alpha_l``. No separable layer (every alpha 0): the
                capability is reported as indistinguishable from the pool and scored with equal layer
                weights (the documented fallback), never silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.features.reduction import massive_dims  # noqa: F401  (step 2: the rule compact stores share)

DIRECTIONS = ("contrastive", "lda", "pca")
LENGTH_CORR_MAX = 0.5
# Rows widened to float32 at a time: a chunk stays in cache for the products that follow, where widening a
# whole shard wrote (and page-faulted) hundreds of MB first. Same numbers: every row is computed alone.
CHUNK_ROWS = 256


class NaitCInputError(ValueError):
    """Features NAIT-C cannot clean or separate, named."""


@dataclass(frozen=True)
class PrefixStates:
    """The constant template prefix: its length P, the per-layer sum S of its states and its first state."""

    length: int
    sums: np.ndarray  # [L, d]
    first: np.ndarray  # [L, d]


def clean_means(layer_mean: np.ndarray, n_tokens: np.ndarray, prefix: PrefixStates,
                ids: Sequence[str] = (), dtype=np.float32) -> np.ndarray:
    """Content-only token means ``(K·m - S) / (K - P)``, [n, L, d] (float32 unless ``dtype`` says)."""
    k = np.asarray(n_tokens, np.float64)
    content = k - prefix.length
    if (content <= 0).any():
        bad = np.flatnonzero(content <= 0)[:5]
        named = [ids[i] for i in bad] if len(ids) else bad.tolist()
        raise NaitCInputError(f"rows with no token after the {prefix.length}-token template prefix: {named}")
    # In place on one float64 copy: a shard's [n, L, d] is hundreds of MB, each temporary as much again.
    m = np.array(layer_mean, np.float64)
    m *= k[:, None, None]
    m -= prefix.sums[None].astype(np.float64)
    m /= content[:, None, None]
    return m.astype(dtype, copy=False)


class PoolMoments:
    """Per layer and dimension: mean and SD of the cleaned pool features, and their correlation with 1/K,
    accumulated shard by shard (float64). Sums, so a shard's moments are kept and added to others'."""

    FIELDS = ("n", "sum", "sumsq", "sum_x_inv", "sum_inv", "sumsq_inv")

    def __init__(self, layers: int, width: int):
        self.n = 0
        self.sum = np.zeros((layers, width))
        self.sumsq = np.zeros((layers, width))
        self.sum_x_inv = np.zeros((layers, width))
        self.sum_inv = 0.0
        self.sumsq_inv = 0.0

    def merge(self, other: PoolMoments) -> None:
        if other.sum.shape != self.sum.shape:
            raise NaitCInputError(f"moments of {other.sum.shape} features cannot be added to {self.sum.shape}")
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, name)) for name in self.FIELDS}

    @classmethod
    def from_arrays(cls, arrays) -> PoolMoments:
        moments = cls(*arrays["sum"].shape)
        moments.n = int(arrays["n"])
        moments.sum_inv, moments.sumsq_inv = float(arrays["sum_inv"]), float(arrays["sumsq_inv"])
        for name in ("sum", "sumsq", "sum_x_inv"):
            setattr(moments, name, np.array(arrays[name], np.float64))
        return moments

    def add(self, clean: np.ndarray, n_tokens: np.ndarray) -> None:
        x = clean.astype(np.float64, copy=False).reshape(len(clean), -1)
        inv = 1.0 / np.asarray(n_tokens, np.float64)
        shape = self.sum.shape
        self.n += len(x)
        self.sum += x.sum(0).reshape(shape)
        self.sumsq += np.square(x).sum(0).reshape(shape)
        self.sum_x_inv += (inv @ x).reshape(shape)
        self.sum_inv += inv.sum()
        self.sumsq_inv += (inv * inv).sum()

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.n

    @property
    def typical_magnitude(self) -> np.ndarray:
        """[L]: the median over dimensions of the root mean square of the pool's features."""
        return np.median(np.sqrt(self.sumsq / self.n), axis=-1)

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.sumsq / self.n - self.mean ** 2, 0.0))

    def corr_with_inverse_length(self) -> np.ndarray:
        mean_inv = self.sum_inv / self.n
        sd_inv = np.sqrt(max(self.sumsq_inv / self.n - mean_inv ** 2, 0.0))
        cov = self.sum_x_inv / self.n - self.mean * mean_inv
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = cov / (self.sd * sd_inv)
        return np.nan_to_num(corr, nan=0.0)


@dataclass(frozen=True)
class Standardiser:
    mean: np.ndarray  # [L, d]
    sd: np.ndarray  # [L, d]
    keep: np.ndarray  # [L, d] bool

    def __call__(self, clean: np.ndarray) -> np.ndarray:
        # float32 with the mask folded into the scale: two passes over a shard, where float64 temporaries
        # and a separate mask took five.
        z = np.subtract(clean, self.mean.astype(np.float32)[None], dtype=np.float32)
        z *= self.scale.astype(np.float32)[None]
        return z

    @property
    def scale(self) -> np.ndarray:
        """[L, d]: 1 / SD on the kept dimensions, 0 on the dropped ones."""
        return np.where(self.keep, 1.0 / np.where(self.keep, self.sd, 1.0), 0.0)


def _prefix_coefficients(n_tokens: np.ndarray, prefix: PrefixStates | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row ``a = K / (K - P)`` and ``b = -1 / (K - P)``: the cleaned mean is ``a·m + b·S`` (a = 1, b = 0
    without a prefix to remove)."""
    if prefix is None:
        return np.ones(n), np.zeros(n)
    k = np.asarray(n_tokens, np.float64)
    return k / (k - prefix.length), -1.0 / (k - prefix.length)


def folded_projections(layer_mean: np.ndarray, n_tokens: np.ndarray, prefix: PrefixStates | None,
                       standardise: Standardiser, directions: np.ndarray) -> np.ndarray:
    """``standardise(clean_means(...))`` projected on ``directions`` ([F, L, d]), [n, F, L] float32, without
    forming the cleaned or standardised features: both are affine in the stored means per row,
    ``z = (a·m + b·S - mean) ⊙ s`` with ``a = K / (K - P)``, ``b = -1 / (K - P)`` and ``s`` the kept dimensions'
    1 / SD, so ``z · v = a (m · (s ⊙ v)) + b (S · (s ⊙ v)) - mean · (s ⊙ v)``: one batched product on the stored
    means. ``prefix`` None: no cleaning (a = 1, b = 0). Dropped dimensions have s = 0, so the massive ones add
    nothing."""
    from nait_pipeline.lib.features.feature_store import to_float32

    weights = directions.astype(np.float64) * standardise.scale[None]  # [F, L, d]
    offset = -(weights * standardise.mean[None]).sum(-1)  # [F, L]
    a, b = _prefix_coefficients(n_tokens, prefix, len(layer_mean))
    prefix_term = np.zeros_like(offset) if prefix is None else (weights * prefix.sums[None]).sum(-1)  # [F, L]
    import torch

    w = torch.from_numpy(weights.astype(np.float32))
    out = np.empty((len(layer_mean), len(w), layer_mean.shape[1]), np.float32)
    for start in range(0, len(layer_mean), CHUNK_ROWS):
        m = torch.from_numpy(to_float32(layer_mean[start : start + CHUNK_ROWS]))
        out[start : start + CHUNK_ROWS] = torch.einsum("nld,fld->nfl", m, w).numpy()  # batched GEMMs per layer
    out *= a[:, None, None].astype(np.float32)
    out += (b[:, None, None] * prefix_term[None] + offset[None]).astype(np.float32)
    return out


def standardised_means(layer_mean: np.ndarray, n_tokens: np.ndarray, prefix: PrefixStates | None,
                       standardise: Standardiser) -> np.ndarray:
    """``standardise(clean_means(...))`` in float32, in place on one copy of the stored means (a shard at a
    time: float64 temporaries made this NAIT-C's slowest step). The float32 error of the prefix removal is
    largest in the massive dimensions, which the standardiser drops."""
    from nait_pipeline.lib.features.feature_store import to_float32

    z = to_float32(layer_mean)
    if z is layer_mean or not z.flags.writeable:
        z = z.copy()
    if prefix is not None:
        a, b = _prefix_coefficients(n_tokens, prefix, len(layer_mean))
        z *= a.astype(np.float32)[:, None, None]
        z += b.astype(np.float32)[:, None, None] * prefix.sums.astype(np.float32)[None]
    z -= standardise.mean.astype(np.float32)[None]
    z *= standardise.scale.astype(np.float32)[None]
    return z


def standardiser(moments: PoolMoments, massive: np.ndarray, corr_max: float = LENGTH_CORR_MAX) -> Standardiser:
    """Keep dimensions that vary over the pool, are not massive and do not track 1/K."""
    sd = moments.sd
    keep = (sd > 1e-8) & ~massive & (np.abs(moments.corr_with_inverse_length()) <= corr_max)
    if not keep.any(axis=1).all():
        raise NaitCInputError(f"layers {np.flatnonzero(~keep.any(axis=1)).tolist()} keep no dimension after masking")
    return Standardiser(moments.mean, sd, keep)


def directions(z_target: np.ndarray, kind: str = "contrastive", pool_sample: np.ndarray | None = None) -> np.ndarray:
    """[L, d] unit directions from the in-domain z-features (the pool's z-mean is 0 by construction)."""
    if kind not in DIRECTIONS:
        raise NaitCInputError(f"direction must be one of {DIRECTIONS}, got {kind!r}")
    if len(z_target) < 2:
        raise NaitCInputError(f"{len(z_target)} in-domain row(s): a direction needs at least 2")
    mean = z_target.astype(np.float64).mean(0)  # [L, d]
    if kind == "contrastive":
        w = mean
    elif kind == "lda":
        if pool_sample is None or len(pool_sample) < 2:
            raise NaitCInputError("lda needs a sample of the pool's z-features")
        w = np.stack([_ledoit_wolf_solve(pool_sample[:, layer], mean[layer]) for layer in range(len(mean))])
    else:
        w = np.zeros_like(mean)
        for layer in range(mean.shape[0]):
            centred = z_target[:, layer].astype(np.float64) - mean[layer]
            pc = np.linalg.svd(centred, full_matrices=False)[2][0]
            w[layer] = pc if pc @ mean[layer] >= 0 else -pc  # the contrastive sign
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    return (w / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _ledoit_wolf_solve(sample: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Sigma^-1 mean, Sigma the Ledoit-Wolf shrunk covariance of the pool sample (scikit-learn)."""
    from sklearn.covariance import ledoit_wolf

    covariance, _ = ledoit_wolf(sample.astype(np.float64), assume_centered=True)
    return np.linalg.solve(covariance, mean)


def length_matched_auc(target_scores: np.ndarray, target_lengths: np.ndarray, pool_scores: np.ndarray,
                       pool_lengths: np.ndarray, tolerance: float = 0.15, pool_order: np.ndarray | None = None) -> float:
    """Mean over in-domain rows of P(pool score < its score) + 0.5 P(equal), each row compared only
    with pool rows whose length is within ±tolerance of its own. NaN when no row has a comparator.
    ``pool_order``: the pool rows by length (a stable argsort), when the caller asks for many layers."""
    order = np.argsort(pool_lengths, kind="stable") if pool_order is None else pool_order
    lengths = np.asarray(pool_lengths)[order]
    scores = np.asarray(pool_scores)[order]
    values = []
    for score, length in zip(target_scores, target_lengths):
        lo = np.searchsorted(lengths, length * (1 - tolerance), "left")
        hi = np.searchsorted(lengths, length * (1 + tolerance), "right")
        if hi > lo:
            window = scores[lo:hi]
            values.append(((window < score).sum() + 0.5 * (window == score).sum()) / len(window))
    return float(np.mean(values)) if values else float("nan")


def fold_of(ids: Sequence[str], folds: int) -> np.ndarray:
    """A fold per in-domain row from a hash of its id: independent of row order."""
    from nait_pipeline.lib.io.hashing import sha256_text

    keys = sorted(range(len(ids)), key=lambda i: (sha256_text(f"fold:{ids[i]}"), ids[i]))
    out = np.zeros(len(ids), np.int64)
    out[keys] = np.arange(len(ids)) % folds
    return out


def layer_weights(aucs: np.ndarray, min_auc: float = 0.6) -> np.ndarray:
    """alpha_l = max(0, 2·AUC_l - 1) for layers that separate at least ``min_auc`` (about two standard
    errors above chance for 40 held-out rows: noise layers weigh 0); a layer without a comparator weighs 0."""
    aucs = np.asarray(aucs, np.float64)
    usable = np.isfinite(aucs) & (np.nan_to_num(aucs) >= min_auc)
    return np.where(usable, np.maximum(0.0, 2.0 * np.nan_to_num(aucs) - 1.0), 0.0)


def combine(standardised_projections: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Scores, per-layer contributions [N, L] and whether the equal-weight fallback was used."""
    fallback = not (alpha > 0).any()
    weights = np.full(len(alpha), 1.0 / len(alpha)) if fallback else alpha / alpha.sum()
    contributions = standardised_projections * weights[None]
    return contributions.sum(1), contributions, fallback


def standardise_columns(values: np.ndarray) -> np.ndarray:
    sd = values.std(0)
    return (values - values.mean(0)) / np.where(sd > 0, sd, 1.0)
