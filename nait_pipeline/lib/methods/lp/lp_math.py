"""Learning Percentage math (methods.md sections 6.2 steps 4-5 and 11), Dagster-free and on arrays.

Scores, from the perplexity trajectory ``P`` ([N, E+1]: before training, then after each epoch):

- ``lp1``: LP(1) = (P0 - P1) / (P0 - PE), the share of the whole perplexity drop achieved in epoch 1.
  Zero denominator (P0 == PE): LP = 0, as the official code sets it (such rows sort towards the
  hard end). Negative values are kept: perplexity that rose in epoch 1 (or over training) is
  what the official ranking sees, so those rows count as the hardest.
- ``lp_app``: LP_app = (P0 - P1) / P0, the one-epoch proxy. P0 >= 1 for any row with a response
  token (a perplexity), so the denominator is never zero there.
- A row whose response was truncated away has no perplexity. Its LP is defined as 1.0 (for both
  kinds: "everything learnt at once", the easy end) and it is reported; the selection also places
  such rows after every scored row of their cluster, so it is never chosen as hard before a row
  with a real score. No value is ever NaN.

Selection, inside each cluster: a stable ascending sort by LP, ties by example id (the one
deviation from the official unstable sort, so equal inputs give equal subsets), cut into
``q = round(100 / percentage)`` chunks by ``np.array_split`` (Python's half-to-even rounding, as
the official script); the low (hard) variant keeps chunk 0, mid keeps chunk ``q // 2``, high keeps
the last chunk. The union over clusters is the subset, so its size is about N / q (each cluster's
chunk rounds on its own).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LP_KINDS = ("lp1", "lp_app")
NO_RESPONSE_LP = 1.0
PARTS = ("low", "mid", "high")


class LearningPercentageError(ValueError):
    """Trajectories or clusters that LP cannot use, named."""


def learning_percentage(perplexities: np.ndarray, no_response: np.ndarray, kind: str = "lp1") -> np.ndarray:
    """LP of every row from its [E+1] perplexity trajectory (see the module docstring for the rules)."""
    p = np.asarray(perplexities, np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise LearningPercentageError(f"perplexities must be [N, E+1] with E >= 1, got shape {p.shape}")
    if kind not in LP_KINDS:
        raise LearningPercentageError(f"kind must be one of {LP_KINDS}, got {kind!r}")
    no_response = np.asarray(no_response, bool)
    scored = ~no_response
    if not np.isfinite(p[scored]).all():
        bad = np.flatnonzero(scored & ~np.isfinite(p).all(1))
        raise LearningPercentageError(f"non-finite perplexities at rows {bad[:5].tolist()}")
    if (p[scored] < 1.0).any():
        bad = np.flatnonzero(scored & (p < 1.0).any(1))
        raise LearningPercentageError(f"perplexities below 1 (not exp of a cross-entropy) at rows {bad[:5].tolist()}")
    drop_first = p[:, 0] - p[:, 1]
    denominator = p[:, 0] - p[:, -1] if kind == "lp1" else p[:, 0]
    lp = np.zeros(len(p), np.float64)
    defined = scored & (denominator != 0)
    lp[defined] = drop_first[defined] / denominator[defined]
    lp[no_response] = NO_RESPONSE_LP
    return lp


def chunks_per_cluster(percentage: float) -> int:
    """q = round(100 / percentage), Python's half-to-even rounding as the official script."""
    if not 0 < percentage <= 100:
        raise LearningPercentageError(f"percentage must be in (0, 100], got {percentage}")
    return max(1, round(100 / percentage))


def cluster_members(clusters: np.ndarray) -> list[np.ndarray]:
    """Each cluster's row indices (ascending), clusters in ascending order: one stable sort, where a scan of
    every row per cluster was O(N x clusters) (19k clusters at 1M rows by the official 1 per 52 rows)."""
    clusters = np.asarray(clusters)
    order = np.argsort(clusters, kind="stable")
    starts = np.flatnonzero(np.r_[True, clusters[order][1:] != clusters[order][:-1]]) if len(order) else []
    return np.split(order, starts[1:]) if len(order) else []


def select_per_cluster(ids: Sequence[str], lp: np.ndarray, clusters: np.ndarray, no_response: np.ndarray,
                       percentage: float, part: str = "low") -> list[int]:
    """Indices of the chosen rows: per cluster (in ascending cluster order), the rows sorted by
    (no_response, LP, id), split into q chunks, chunk 0 (low), q // 2 (mid) or q - 1 (high)."""
    if part not in PARTS:
        raise LearningPercentageError(f"part must be one of {PARTS}, got {part!r}")
    if not (len(ids) == len(lp) == len(clusters) == len(no_response)):
        raise LearningPercentageError("ids, LP, clusters and the no-response flags differ in length")
    q = chunks_per_cluster(percentage)
    which = {"low": 0, "mid": q // 2, "high": q - 1}[part]
    chosen: list[int] = []
    for members in cluster_members(clusters):
        ordered = sorted(members.tolist(), key=lambda i: (bool(no_response[i]), float(lp[i]), ids[i]))
        chosen += [int(i) for i in np.array_split(np.array(ordered, np.int64), q)[which]]
    return chosen


def stratified_random(ids: Sequence[str], clusters: np.ndarray, percentage: float, seed: int) -> list[int]:
    """The cluster-stratified random baseline: per cluster, rows in sha256(seed:id) order, chunk 0 of q."""
    from nait_pipeline.lib.selection.policies import seeded_random

    q = chunks_per_cluster(percentage)
    chosen: list[int] = []
    for members in cluster_members(clusters):
        member_ids = [ids[i] for i in members]
        order = seeded_random(member_ids, len(member_ids), seed)
        chosen += [int(members[i]) for i in np.array_split(np.array(order, np.int64), q)[0]]
    return chosen


def expected_size(cluster_sizes: Sequence[int], percentage: float, part: str = "low") -> int:
    """The subset size the chunking rule must give, in closed form over the cluster sizes:
    ``np.array_split`` gives the first ``n mod q`` chunks ``n // q + 1`` rows and the others ``n // q``."""
    q = chunks_per_cluster(percentage)
    which = {"low": 0, "mid": q // 2, "high": q - 1}[part]
    return sum(n // q + (1 if which < n % q else 0) for n in cluster_sizes)
