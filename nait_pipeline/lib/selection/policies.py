"""Selection policies over score vectors: deterministic top-k and multi-capability merges."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from nait_pipeline.lib.io.hashing import sha256_lines, sha256_text

MERGES = ("zsum", "quota", "pooled")


class NonFiniteScoreError(ValueError):
    """A score (or a value a score is made from) that is NaN or infinite: selection must not go on."""


def require_finite(scores: np.ndarray, ids: Sequence[str], what: str = "scores") -> None:
    bad = ~np.isfinite(scores)
    if bad.any():
        named = [ids[i] for i in np.flatnonzero(bad)[:20]]
        raise NonFiniteScoreError(f"non-finite {what} for {int(bad.sum())} example(s), e.g. {named}")


def budget(n_pool: int, ratio: float) -> int:
    """NAIT keeps the top ceil(r * N)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"budget ratio must be in (0, 1], got {ratio}")
    return min(n_pool, math.ceil(ratio * n_pool - 1e-9))


def rank_order(ids: Sequence[str], scores: np.ndarray, by_id: np.ndarray | None = None) -> np.ndarray:
    """Indices by descending score; ties broken by ascending id, so the order is reproducible. ``by_id``
    (the indices in id order, :func:`id_order`) saves sorting the ids again for many score columns."""
    require_finite(scores, ids)
    by_id = id_order(ids) if by_id is None else by_id
    # Stable sort on -score of the id-ordered list keeps id order among equal scores.
    return by_id[np.argsort(-scores[by_id], kind="stable")]


def id_order(ids: Sequence[str]) -> np.ndarray:
    return np.argsort(np.asarray(ids, dtype=object), kind="stable")


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
    return equal_quota_turns(ids, per_capability, k)[0]


def equal_quota_turns(ids: Sequence[str], per_capability: Mapping[str, np.ndarray],
                      k: int) -> tuple[list[int], list[str]]:
    """:func:`equal_quota`, with the capability whose turn picked each chosen row."""
    orders = {c: rank_order(ids, s) for c, s in sorted(per_capability.items())}
    positions = dict.fromkeys(orders, 0)
    chosen: list[int] = []
    by: list[str] = []
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
                by.append(capability)
                taken.add(index)
    return chosen, by


def length_decile_quota(ids: Sequence[str], scores: np.ndarray, lengths: np.ndarray, k: int,
                        bins: int = 10) -> list[int]:
    """Top-k with the pool's length profile: rows are cut into ``bins`` length quantile bins (ties by id),
    each bin gets its share of k (largest remainders, then the shorter bin first) and is filled by
    descending score; the result is in descending score order."""
    order = sorted(range(len(ids)), key=lambda i: (float(lengths[i]), ids[i]))
    groups = np.array_split(np.array(order, np.int64), min(bins, len(ids)))
    exact = [k * len(g) / len(ids) for g in groups]
    quotas = [int(e) for e in exact]
    for b in sorted(range(len(groups)), key=lambda b: (-(exact[b] - quotas[b]), b))[: k - sum(quotas)]:
        quotas[b] += 1
    chosen = []
    for group, quota in zip(groups, quotas):
        members = group.tolist()
        chosen += [members[i] for i in top_k([ids[m] for m in members], scores[members], quota)]
    return sorted(chosen, key=lambda i: (-float(scores[i]), ids[i]))


def seeded_random(ids: Sequence[str], k: int, seed: int) -> list[int]:
    """k indices drawn uniformly by ranking ids on a hash of (seed, id): independent of row order."""
    keys = [sha256_text(f"{seed}:{example_id}") for example_id in ids]
    return sorted(range(len(ids)), key=lambda i: (keys[i], ids[i]))[:k]


def selected_ids_sha256(selected_ids: Sequence[str]) -> str:
    """Hash of the selected ids as a set (sorted), so rank order does not change it."""
    return sha256_lines(sorted(selected_ids))


def round_robin(orders: Sequence[np.ndarray], k: int) -> list[int]:
    """RDS+ round-robin, the official semantics (methods.md section 11).

    ``orders`` holds one ranked list of pool indices per query (single capability) or per capability
    (several). In each round every list, in the given order, pops exactly one item from its head; an
    item already selected is dropped and that list contributes nothing this round. Stops at ``k``
    items or when every list is exhausted.
    """
    heads = [0] * len(orders)
    chosen: list[int] = []
    taken: set[int] = set()
    while len(chosen) < k:
        progressed = False
        for position, order in enumerate(orders):
            if heads[position] >= len(order):
                continue
            progressed = True
            index = int(order[heads[position]])
            heads[position] += 1
            if index not in taken:
                taken.add(index)
                chosen.append(index)
                if len(chosen) == k:
                    break
        if not progressed:
            break
    return chosen


def column_orders(ids: Sequence[str], matrix: np.ndarray) -> list[np.ndarray]:
    """For each column of an [N, m] score matrix, pool indices by descending score (ties by id), as int32
    where N allows (m orders of a million rows: 1 GiB, not 2)."""
    by_id = id_order(ids)
    dtype = np.int32 if len(ids) < 2**31 else np.int64
    return [rank_order(ids, matrix[:, column], by_id).astype(dtype) for column in range(matrix.shape[1])]


PERPLEXITY_BANDS = ("top", "middle", "bottom")


def band(ids: Sequence[str], scores: np.ndarray, k: int, which: str) -> list[int]:
    """k indices from one band of the score distribution: ``top`` (highest), ``bottom`` (lowest) or
    ``middle`` (the k around the median: positions floor((N - k) / 2) .. + k of the descending order).
    Ties are broken by id, so bands are reproducible."""
    if which not in PERPLEXITY_BANDS:
        raise ValueError(f"band must be one of {PERPLEXITY_BANDS}, got {which!r}")
    order = rank_order(ids, scores)
    if which == "top":
        return order[:k].tolist()
    if which == "bottom":
        return order[::-1][:k].tolist()
    start = (len(order) - k) // 2
    return order[start : start + k].tolist()


def balanced_random(ids: Sequence[str], groups: Sequence[str], k: int, seed: int) -> list[int]:
    """k indices spread as evenly as possible over groups (pool sources), seeded.

    Each group gets floor(k / G) or one more (the extra ones go to groups in hash order); a group
    with fewer rows than its share gives all of them and the rest is shared among the others. Within
    a group rows are drawn as :func:`seeded_random` does (hash of seed and id), so the subset does not
    depend on row order."""
    if len(ids) != len(groups):
        raise ValueError(f"{len(ids)} ids but {len(groups)} group labels")
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    for group, indices in members.items():
        indices.sort(key=lambda i: (sha256_text(f"{seed}:{ids[i]}"), ids[i]))
    quota = dict.fromkeys(members, 0)
    remaining = min(k, len(ids))
    open_groups = sorted(members, key=lambda g: (sha256_text(f"{seed}:group:{g}"), g))
    while remaining > 0:
        open_groups = [g for g in open_groups if quota[g] < len(members[g])]
        share, extra = divmod(remaining, len(open_groups))
        for position, group in enumerate(open_groups):
            grant = min(share + (1 if position < extra else 0), len(members[group]) - quota[group])
            quota[group] += grant
            remaining -= grant
    chosen = [i for group in members for i in members[group][: quota[group]]]
    return sorted(chosen, key=lambda i: (sha256_text(f"{seed}:{ids[i]}"), ids[i]))


def proportional_random(ids: Sequence[str], strata: Sequence[str], k: int, seed: int) -> list[int]:
    """k indices with each stratum's share of the pool (largest remainders, ties by stratum name),
    drawn inside each stratum in sha256(seed:id) order: random, with less variance than a plain draw."""
    if len(ids) != len(strata):
        raise ValueError(f"{len(ids)} ids but {len(strata)} strata")
    members: dict[str, list[int]] = {}
    for index, stratum in enumerate(strata):
        members.setdefault(stratum, []).append(index)
    k = min(k, len(ids))
    exact = {s: k * len(m) / len(ids) for s, m in members.items()}
    quota = {s: int(v) for s, v in exact.items()}
    for stratum in sorted(members, key=lambda s: (-(exact[s] - quota[s]), s))[: k - sum(quota.values())]:
        quota[stratum] += 1
    chosen = []
    for stratum, indices in members.items():
        indices.sort(key=lambda i: (sha256_text(f"{seed}:{ids[i]}"), ids[i]))
        chosen += indices[: quota[stratum]]
    return sorted(chosen, key=lambda i: (sha256_text(f"{seed}:{ids[i]}"), ids[i]))


def length_quintiles(lengths: Sequence[float]) -> list[int]:
    """Each row's length quintile (0-4) over the pool, ties broken by position."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out = [0] * len(lengths)
    for rank, index in enumerate(order):
        out[index] = rank * 5 // max(1, len(lengths))
    return out
