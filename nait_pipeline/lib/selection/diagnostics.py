"""Offline diagnostics of a subset (seconds, no fine-tuning; selection-quality.md section 2.3).

- length coupling: mean response length of the subset / the pool's, and Spearman of the score the
  subset was ranked by with response length over the whole pool;
- source composition and enrichment: each source's share of the subset / its share of the pool;
- length control: overlap (|S ∩ L| / |S|) with the longest-k subset of the same size, and with a
  seeded random one (the level chance gives).

Length is the response's character count from the pool table, so every method (random too) gets the
same diagnostics whether or not the pool was featurized.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.selection.policies import seeded_random, top_k

LENGTH_GATE = (0.8, 1.25)  # mean length ratio a selection by content should stay within
SPEARMAN_GATE = 0.3  # |Spearman(score, length)| above this means the score is largely a length score


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Rank correlation (average ranks for ties); None when either side is constant."""
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


@dataclass(frozen=True)
class Diagnostics:
    n_selected: int
    length_ratio: float
    spearman_length: float | None
    overlap_longest: float
    overlap_random: float
    composition: dict[str, float]
    enrichment: dict[str, float]

    def passes_length_gates(self) -> bool:
        ratio_ok = LENGTH_GATE[0] <= self.length_ratio <= LENGTH_GATE[1]
        return ratio_ok and (self.spearman_length is None or abs(self.spearman_length) <= SPEARMAN_GATE)

    def as_row(self) -> dict:
        return {"n_selected": self.n_selected, "length_ratio": self.length_ratio,
                "spearman_length": self.spearman_length, "overlap_longest": self.overlap_longest,
                "overlap_random": self.overlap_random, "composition_json": json.dumps(self.composition, sort_keys=True),
                "enrichment_json": json.dumps(self.enrichment, sort_keys=True)}


def diagnose(ids: Sequence[str], lengths: np.ndarray, sources: Sequence[str], chosen: Sequence[int],
             scores: np.ndarray | None, scored: np.ndarray | None = None) -> Diagnostics:
    """Diagnostics of the subset ``chosen`` (indices into ``ids``). ``scores`` is what it was ranked by
    (None for random subsets); ``scored`` marks the rows that have a score."""
    k = len(chosen)
    picked = set(chosen)
    lengths = np.asarray(lengths, np.float64)
    pool_mean = float(lengths.mean()) if len(lengths) else 0.0
    ratio = float(lengths[list(chosen)].mean() / pool_mean) if k and pool_mean else float("nan")
    rho = None
    if scores is not None:
        mask = np.ones(len(ids), bool) if scored is None else scored
        rho = spearman(np.asarray(scores, np.float64)[mask], lengths[mask])
    longest = set(top_k(ids, lengths, k))
    random = set(seeded_random(ids, k, 0))
    pool_share = Counter(sources)
    subset_share = Counter(sources[i] for i in chosen)
    composition = {s: round(c / k, 4) for s, c in sorted(subset_share.items())} if k else {}
    enrichment = {s: round((subset_share.get(s, 0) / k) / (pool_share[s] / len(ids)), 3) for s in sorted(pool_share)} \
        if k else {}
    return Diagnostics(n_selected=k, length_ratio=round(ratio, 4), spearman_length=None if rho is None else round(rho, 4),
                       overlap_longest=round(len(picked & longest) / k, 4) if k else 0.0,
                       overlap_random=round(len(picked & random) / k, 4) if k else 0.0,
                       composition=composition, enrichment=enrichment)
