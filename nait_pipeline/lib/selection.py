"""Selection policies over score vectors: deterministic top-k and multi-capability merges."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from nait_pipeline.lib.hashing import sha256_lines, sha256_text
from nait_pipeline.lib.nait import require_finite

MERGES = ("zsum", "quota", "pooled")


def budget(n_pool: int, ratio: float) -> int:
    """NAIT keeps the top ceil(r * N)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"budget ratio must be in (0, 1], got {ratio}")
    return min(n_pool, math.ceil(ratio * n_pool - 1e-9))


def rank_order(ids: Sequence[str], scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; ties broken by ascending id, so the order is reproducible."""
    require_finite(scores, ids)
    by_id = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    # Stable sort on -score of the id-ordered list keeps id order among equal scores.
    return by_id[np.argsort(-scores[by_id], kind="stable")]


def top_k(ids: Sequence[str], scores: np.ndarray, k: int) -> list[int]:
    return rank_order(ids, scores)[:k].tolist()


def zscore(scores: np.ndarray) -> np.ndarray:
    std = scores.std()
    return (scores - scores.mean()) / (std if std > 0 else 1.0)


def zsum_scores(per_capability: Mapping[str, np.ndarray]) -> np.ndarray:
    """Merge (a): z-normalize each capability's scores over the pool, then sum."""
    return np.sum([zscore(s) for _, s in sorted(per_capability.items())], axis=0)


def equal_quota(ids: Sequence[str], per_capability: Mapping[str, np.ndarray], k: int) -> list[int]:
    """Merge (c): capabilities take turns picking their best not-yet-selected example until k are chosen."""
    orders = {c: rank_order(ids, s) for c, s in sorted(per_capability.items())}
    positions = dict.fromkeys(orders, 0)
    chosen: list[int] = []
    taken: set[int] = set()
    while len(chosen) < k:
        for capability, order in orders.items():
            if len(chosen) == k:
                break
            while positions[capability] < len(order) and order[positions[capability]] in taken:
                positions[capability] += 1
            if positions[capability] < len(order):
                index = int(order[positions[capability]])
                chosen.append(index)
                taken.add(index)
    return chosen


def seeded_random(ids: Sequence[str], k: int, seed: int) -> list[int]:
    """k indices drawn uniformly by ranking ids on a hash of (seed, id): independent of row order."""
    keys = [sha256_text(f"{seed}:{example_id}") for example_id in ids]
    return sorted(range(len(ids)), key=lambda i: (keys[i], ids[i]))[:k]


def selected_ids_sha256(selected_ids: Sequence[str]) -> str:
    """Hash of the selected ids as a set (sorted), so rank order does not change it."""
    return sha256_lines(sorted(selected_ids))
