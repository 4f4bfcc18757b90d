"""G2IS (Zhao et al. 2025; methods.md section 5 and 11): a gradient walk on a kNN graph, guided by the
principal components of the target gradients. Matches the official ``gradient_walk.py``:

- Core knowledge: scikit-learn ``PCA(n_components=val_k)`` on the target gradients (variance mode: the
  fewest components reaching ``val_k`` of the variance); weights = their explained-variance ratios,
  renormalised; components L2-normalised. Their signs are scikit-learn's convention (its version is
  recorded: the convention changed between 1.4 and 1.5); ``sign_fix`` orients each so that it has a
  non-negative dot product with the mean target gradient (a documented deviation, off by default).
- Budget ``B = int(N * ratio)``, apportioned to components by the largest remainder (the official rule,
  ties as its ``argsort()[::-1]`` orders them).
- Per component j (in order): the anchor is the row with the largest cosine to ``k_j`` not yet taken
  (the official top-1000 list, then the global argmax: the same row). Then, while the component's set S
  is short of its budget, scan the graph neighbours of the last row added (most similar first) for the
  first row that is not taken, has no negative dot product with any row of S (no conflict) and keeps
  ``|cos(sum_S + g, k_j)| >= delta * |cos(sum_S, k_j)|`` (consistency); if none, scan every untaken row
  by decreasing cosine to ``k_j`` with the same checks (fallback); if none passes, the component stops
  short. The shortfall is returned, never hidden.

Graph: ``graph[i]`` = the ids of i's k most similar rows (cosine, self excluded), most similar first:
exact by blocked matrix products (:func:`knn_graph`, O(N^2 D)), or approximately with a FAISS inverted-file index
(:func:`knn_graph_faiss`, optional ``faiss-cpu``) for pools where the exact graph takes too long.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class G2isInputError(ValueError):
    """Inputs the walk cannot use: too few target rows, mismatched widths, a graph of other rows."""


@dataclass
class CoreKnowledge:
    components: np.ndarray  # [J, D] unit rows
    weights: np.ndarray  # [J] sums to 1
    explained: list[float]
    sklearn_version: str
    sign_fixed: list[bool] = field(default_factory=list)  # per component: flipped by sign_fix


def core_knowledge(targets: np.ndarray, val_k: float = 0.5, sign_fix: bool = False) -> CoreKnowledge:
    import sklearn
    from sklearn.decomposition import PCA

    if len(targets) < 2:
        raise G2isInputError(f"the target gradients' PCA needs at least 2 rows, got {len(targets)}")
    if not 0 < val_k < 1:
        raise G2isInputError(f"val_k is a share of variance in (0, 1), got {val_k}")
    pca = PCA(n_components=val_k).fit(targets)
    components = pca.components_
    components = components / np.maximum(np.linalg.norm(components, axis=1, keepdims=True), 1e-10)
    flipped = [False] * len(components)
    if sign_fix:
        mean = targets.mean(axis=0)
        flipped = [bool(c @ mean < 0) for c in components]
        components = np.where(np.array(flipped)[:, None], -components, components)
    ratios = pca.explained_variance_ratio_
    return CoreKnowledge(components=components.astype(targets.dtype), weights=ratios / ratios.sum(),
                         explained=ratios.tolist(), sklearn_version=sklearn.__version__, sign_fixed=flipped)


def exact_budgets(total: int, weights: np.ndarray) -> np.ndarray:
    """Largest-remainder apportionment of ``total`` by ``weights`` (sums to ``total`` exactly)."""
    exact = total * weights
    budgets = np.floor(exact).astype(int)
    remainder = total - int(budgets.sum())
    if remainder > 0:
        for index in np.argsort(exact - budgets)[::-1][:remainder]:
            budgets[index] += 1
    return budgets


def knn_graph(features: np.ndarray, k: int, block_rows: int = 2048,
              progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[N, k] int32 exact nearest neighbours by inner product (cosine on unit rows), self excluded,
    most similar first (ties by index)."""
    n = len(features)
    k = min(k, n - 1)
    if k < 1:
        raise G2isInputError(f"a graph needs at least 2 rows, got {n}")
    graph = np.empty((n, k), np.int32)
    for start in range(0, n, block_rows):
        sims = features[start : start + block_rows] @ features.T
        rows = np.arange(start, min(start + block_rows, n))
        sims[rows - start, rows] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n - 1 else np.argsort(-sims, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((top, -top_sims), axis=1)
        graph[start : start + len(rows)] = np.take_along_axis(top, order, axis=1)
        if progress:
            progress(start + len(rows), n)
    return graph


def knn_graph_faiss(features: np.ndarray, k: int, nlist: int | None = None, nprobe: int = 4) -> np.ndarray:
    """[N, k] approximate neighbours by inner product from a FAISS inverted-file index (pip install faiss-cpu):
    4 sqrt(N) lists, k-means on a seeded sample of 39 rows per list (10 iterations), ``nprobe`` lists
    searched per row, so the cost grows ~N^1.5 where the exact graph grows N^2. Rows whose search returns
    fewer than k neighbours are padded with -1 (the walk skips them)."""
    try:
        import faiss
    except ImportError as error:  # optional: only pools too large for the exact graph need it
        raise G2isInputError("graph kind 'faiss' needs faiss-cpu: pip install 'nait-pipeline[ann]'") from error
    features = np.ascontiguousarray(features, dtype=np.float32)
    n, dim = features.shape
    k = min(k, n - 1)
    nlist = nlist or max(1, min(n // 39, int(4 * np.sqrt(n))))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    index.train(features[np.sort(np.random.default_rng(0).permutation(n)[: nlist * 39])])
    index.add(features)
    index.nprobe = nprobe
    _, found = index.search(features, k + 1)
    graph = np.full((n, k), -1, np.int32)
    for row in range(n):
        neighbours = found[row][(found[row] != row) & (found[row] >= 0)][:k]
        graph[row, : len(neighbours)] = neighbours
    return graph


@dataclass
class WalkResult:
    selected: list[int]  # row indices in walk order
    budgets: list[int]  # per component
    filled: list[int]  # per component: rows it got
    via_fallback: int  # rows taken by the global fallback
    target: int  # B

    @property
    def shortfall(self) -> int:
        return self.target - len(self.selected)


def gradient_walk(features: np.ndarray, core: CoreKnowledge, graph: np.ndarray, ratio: float, delta: float = 0.8,
                  excluded: np.ndarray | None = None, chunk: int = 64, fallback_chunk: int = 4096) -> WalkResult:
    """The official walk over unit-norm ``features`` [N, D] (float32). Candidates are checked ``chunk`` at a
    time along a neighbour list and in chunks growing from ``chunk`` to ``fallback_chunk`` along the global
    order (a stall that finds nothing scans every untaken row: one matrix product per chunk, not a Python
    step per row); the first passing candidate in order is taken, exactly as a one-by-one scan would."""
    n, dim = features.shape
    if core.components.shape[1] != dim:
        raise G2isInputError(f"components have width {core.components.shape[1]}, the pool features {dim}")
    if len(graph) != n:
        raise G2isInputError(f"the graph has {len(graph)} rows, the pool {n}: rebuild gradient_graph")
    if not 0 < delta <= 1:
        raise G2isInputError(f"delta must be in (0, 1], got {delta}")
    target = int(n * ratio)
    budgets = exact_budgets(target, core.weights)
    taken = np.zeros(n, bool) if excluded is None else excluded.astype(bool).copy()
    selected: list[int] = []
    filled, via_fallback = [], 0

    def similarity(total: np.ndarray, norms: np.ndarray, kv: np.ndarray) -> np.ndarray:
        return np.where(norms > 1e-10, np.abs((total / np.where(norms > 1e-10, norms, 1)[:, None]) @ kv), 0.0)

    def first_passing(candidates: np.ndarray, members: np.ndarray, total: np.ndarray, old: float,
                      kv: np.ndarray, largest: int) -> int | None:
        start, step = 0, chunk
        while start < len(candidates):
            block = candidates[start : start + step]
            start, step = start + step, min(2 * step, largest)  # small first: the first candidates usually pass
            block = block[~taken[block]]
            if not len(block):
                continue
            vectors = features[block]
            no_conflict = ~((members @ vectors.T) < 0).any(axis=0)
            new_total = total[None, :] + vectors
            consistent = similarity(new_total, np.linalg.norm(new_total, axis=1), kv) >= delta * old
            passing = np.flatnonzero(no_conflict & consistent)
            if len(passing):
                return int(block[passing[0]])
        return None

    for j, budget in enumerate(budgets):
        if budget <= 0:
            filled.append(0)
            continue
        kv = core.components[j]
        sims = features @ kv
        order = np.argsort(np.where(taken, -np.inf, sims))[::-1]
        order = order[~taken[order]]
        if not len(order):
            filled.append(0)
            break  # every row is taken: the official loop stops here
        members = np.empty((budget, dim), features.dtype)
        anchor = int(order[0])
        members[0] = features[anchor]
        chosen = [anchor]
        taken[anchor] = True
        total = features[anchor].copy()
        while len(chosen) < budget:
            norm = np.linalg.norm(total)
            old = float(abs((total / norm) @ kv)) if norm > 1e-10 else 0.0
            neighbours = graph[chosen[-1]]
            found = first_passing(neighbours[neighbours >= 0], members[: len(chosen)], total, old, kv, chunk)
            if found is None:
                order = order[~taken[order]]  # rows taken since: never candidates again
                found = first_passing(order, members[: len(chosen)], total, old, kv, fallback_chunk)
                if found is None:
                    break
                via_fallback += 1
            members[len(chosen)] = features[found]
            chosen.append(found)
            taken[found] = True
            total = total + features[found]
        selected += chosen
        filled.append(len(chosen))
    return WalkResult(selected=selected, budgets=budgets.tolist(), filled=filled, via_fallback=via_fallback,
                      target=target)
