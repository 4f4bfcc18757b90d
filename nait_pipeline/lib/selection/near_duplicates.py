"""Near-duplicate clusters of the pool: the same instruction reworded, the same answer under two prompts,
two rows the model embeds alike.

Three kinds, each a clustering of the kept rows (only rows with a near-duplicate are recorded):

- ``instruction`` and ``response``: MinHash over word 5-gram shingles (128 multiply-shift permutations of
  the shingles' 64-bit hashes), LSH in 32 bands of 4 rows, every candidate verified by its estimated
  Jaccard similarity (>= ``jaccard``, 0.7); a text shorter than 5 words is one shingle of all its words;
- ``embedding``: the stored RDS+ embedding (the position-weighted mean of the last layer), centred by the
  pool mean (a language model's embeddings share a large common direction) and unit-normed, rows whose
  cosine is >= ``cosine`` (0.95) joined, by blocked matrix products.

A row's ``group`` joins its clusters of every kind (connected components), so "near-duplicate" means any
of the three. The selection runner's ``max_per_cluster`` keeps at most that many rows of a group among the
candidates (the first by example id), and every subset's diagnostics report its duplicate share.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nait_pipeline.lib.data.text import ngram_hashes, word_ids
from nait_pipeline.lib.io.contract import NEAR_DUPLICATES_SCHEMA as SCHEMA
from nait_pipeline.lib.io.lake import read_table

ASSET = "pool_near_duplicates"
SHINGLE = 5
PERMUTATIONS = 128
BANDS = 32
JACCARD = 0.7
COSINE = 0.95
KINDS = ("instruction", "response", "embedding")
_MASK32 = np.uint64(0xFFFFFFFF)


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def labels(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))])


def shingle_hashes(texts: pa.Array, shingle: int = SHINGLE) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every text's word ``shingle``-grams (one of all its words when it is shorter), and
    the text of each, sorted by text."""
    ids, parents = word_ids(texts)
    full, full_owner = ngram_hashes(ids, parents, shingle)
    hashes, owners = [full], [full_owner]
    lengths = np.bincount(parents, minlength=len(texts))
    for size in np.unique(lengths[(lengths > 0) & (lengths < shingle)]):
        h, owner = ngram_hashes(ids, parents, int(size))
        short = lengths[owner] == size
        hashes.append(h[short])
        owners.append(owner[short])
    hashes, owners = np.concatenate(hashes), np.concatenate(owners)
    order = np.argsort(owners, kind="stable")
    return hashes[order], owners[order]


def minhash(texts: pa.Array, shingle: int = SHINGLE, permutations: int = PERMUTATIONS, seed: int = 0,
            chunk: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """[n, permutations] uint32 MinHash signatures, and which texts have any word (the others have none)."""
    hashes, owners = shingle_hashes(texts, shingle)
    n = len(texts)
    has_words = np.zeros(n, bool)
    has_words[owners] = True
    signatures = np.zeros((n, permutations), np.uint32)
    if not len(hashes):
        return signatures, has_words
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, permutations, dtype=np.uint64) | np.uint64(1)  # odd: a permutation of uint64
    b = rng.integers(0, 2**63, permutations, dtype=np.uint64)
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    rows = owners[starts]
    with np.errstate(over="ignore"):
        for first in range(0, permutations, chunk):
            part = slice(first, first + chunk)
            permuted = ((hashes[:, None] * a[None, part] + b[None, part]) >> np.uint64(32)) & _MASK32
            signatures[rows, part] = np.minimum.reduceat(permuted, starts, axis=0).astype(np.uint32)
    return signatures, has_words


def lsh_pairs(signatures: np.ndarray, valid: np.ndarray, bands: int = BANDS, jaccard: float = JACCARD) -> Iterable[tuple[int, int]]:
    """Pairs of rows whose estimated Jaccard similarity is at least ``jaccard``, found through LSH buckets
    (each bucket's members are verified against its first member)."""
    n, permutations = signatures.shape
    width = permutations // bands
    index = np.flatnonzero(valid)
    seen: set[tuple[int, int]] = set()
    for band in range(bands):
        block = np.ascontiguousarray(signatures[index, band * width:(band + 1) * width])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * width))).ravel()
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        shared = counts[inverse] > 1
        if not shared.any():
            continue
        members = index[shared]
        buckets = inverse[shared]
        order = np.argsort(buckets, kind="stable")
        members, buckets = members[order], buckets[order]
        starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
        for start, stop in zip(starts, np.r_[starts[1:], len(members)]):
            head = members[start]
            for other in members[start + 1:stop]:
                pair = (int(head), int(other))
                if pair in seen:
                    continue
                seen.add(pair)
                if np.mean(signatures[head] == signatures[other]) >= jaccard:
                    yield pair


def embedding_pairs(blocks: Iterable[np.ndarray], cosine: float = COSINE, block_rows: int = 1024) -> Iterable[tuple[int, int]]:
    """Pairs of rows whose centred embeddings have cosine >= ``cosine`` (blocked [block, N] products)."""
    vectors = np.concatenate([np.asarray(b, np.float32) for b in blocks])
    vectors = vectors - vectors.mean(0, keepdims=True)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    for start in range(0, len(vectors), block_rows):
        similar = vectors[start:start + block_rows] @ vectors.T
        rows, cols = np.nonzero(similar >= cosine)
        for row, col in zip(rows + start, cols):
            if row < col:
                yield int(row), int(col)


def clusters(ids: list[str], pairs_by_kind: dict[str, Iterable[tuple[int, int]]]) -> pa.Table:
    """One row per (row, kind) in a cluster of two or more, with the cluster of every kind joined in ``group``
    (cluster names: the kind and the cluster's first example id)."""
    joined = UnionFind(len(ids))
    labels = {}
    for kind, pairs in pairs_by_kind.items():
        found = UnionFind(len(ids))
        for a, b in pairs:
            found.union(a, b)
            joined.union(a, b)
        labels[kind] = found.labels()
    group = joined.labels()
    rows = []
    for kind, label in labels.items():
        sizes = np.bincount(label, minlength=len(ids))
        for i in np.flatnonzero(sizes[label] > 1):
            rows.append({"example_id": ids[i], "kind": kind, "cluster": f"{kind}:{ids[label[i]]}",
                         "cluster_size": int(sizes[label[i]]), "group": f"group:{ids[group[i]]}"})
    return pa.Table.from_pylist(rows, schema=SCHEMA)




def find_near_duplicates(layout, shingle: int = SHINGLE, jaccard: float = JACCARD, cosine: float = COSINE) -> tuple[pa.Table, dict]:
    """Cluster the lake's kept pool rows (ids sorted) by every kind; returns the table and per-kind stats."""
    from nait_pipeline.lib.features.forward import read_pool_store
    from nait_pipeline.lib.io.pool_view import PoolView

    pool = PoolView.open(layout)
    rows = pool.kept(["example_id", "instruction", "input", "output"]).sort_by("example_id")
    ids = rows.column("example_id").to_pylist()
    stats: dict = {"pool_rows": len(ids)}
    pairs: dict[str, list[tuple[int, int]]] = {}
    prompts = pa.array([f"{i} {x}" for i, x in zip(rows.column("instruction").to_pylist(), rows.column("input").to_pylist())])
    for kind, texts in (("instruction", prompts), ("response", rows.column("output").combine_chunks())):
        started = time.perf_counter()
        signatures, valid = minhash(texts, shingle)
        pairs[kind] = list(lsh_pairs(signatures, valid, jaccard=jaccard))
        stats[kind] = {"pairs": len(pairs[kind]), "seconds": round(time.perf_counter() - started, 2)}
    started = time.perf_counter()
    store, _ = read_pool_store(layout, ("rds_embedding",), needed_by=ASSET)
    order = np.argsort(np.asarray(store.ids, dtype=object), kind="stable")
    if [store.ids[i] for i in order] != ids:
        raise ValueError("the forward store covers other rows than the pool keeps: re-materialize pool_activations")
    embeddings = store.vector("rds_embedding")[order]
    pairs["embedding"] = list(embedding_pairs([embeddings], cosine))
    stats["embedding"] = {"pairs": len(pairs["embedding"]), "seconds": round(time.perf_counter() - started, 2)}
    table = clusters(ids, pairs)
    for kind in KINDS:
        members = table.filter(pc.equal(table.column("kind"), kind))
        stats[kind].update(rows=len(members), clusters=len(set(members.column("cluster").to_pylist())))
    stats["groups"] = len(set(table.column("group").to_pylist()))
    stats["rows_in_groups"] = len(set(table.column("example_id").to_pylist()))
    return table, stats


def capped(ids: list[str], groups: dict[str, str], max_per_group: int) -> set[str]:
    """The rows beyond the first ``max_per_group`` of their group (by example id): what a cap leaves out."""
    taken: dict[str, int] = {}
    dropped = set()
    for example_id in sorted(ids):
        group = groups.get(example_id)
        if group is None:
            continue
        taken[group] = taken.get(group, 0) + 1
        if taken[group] > max_per_group:
            dropped.add(example_id)
    return dropped


def duplicate_share(selected: Iterable[str], groups: dict[str, str]) -> float:
    """Share of ``selected`` rows that share a near-duplicate group with another selected row."""
    selected = list(selected)
    if not selected:
        return 0.0
    counts: dict[str, int] = {}
    for example_id in selected:
        if example_id in groups:
            counts[groups[example_id]] = counts.get(groups[example_id], 0) + 1
    return sum(c for c in counts.values() if c > 1) / len(selected)


def read_groups(layout, pool_version: str) -> tuple[dict[str, str], str] | None:
    """(example id -> near-duplicate group, the clustering's version), checked to be of ``pool_version``;
    None where the pool was not clustered."""

    from nait_pipeline.lib.io.lake import read_metadata

    path = layout.pool_near_duplicates
    if not path.exists():
        return None
    meta = read_metadata(path)
    clustered = meta.get("pool_version")
    if clustered != pool_version:
        raise ValueError(f"{ASSET} was built on pool version {clustered}, the pool is now {pool_version}: "
                         f"re-materialize {ASSET}")
    table = read_table(path, columns=["example_id", "group"])
    return (dict(zip(table.column("example_id").to_pylist(), table.column("group").to_pylist())),
            meta["near_duplicates_version"])
