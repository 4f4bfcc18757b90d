"""The gradient methods' selection stages on a synthetic gradient store, at growing pool sizes.

    .venv/bin/python bench/policies.py [--sizes 100000 300000 1000000] [--dim 1024] [--targets 300]

Synthetic store: unit rows of width ``dim`` drawn around 1,000 cluster centres (so neighbours, conflicts
and principal components are not trivial), one checkpoint; ``targets`` target rows in 10 subtasks drawn
around 30 of the centres. Per pool size N, each stage as the pipeline runs it:

- LESS:   the [N, m] influence matrix (blocked float32 products) and the per-subtask mean, max over subtasks;
- BIDS:   column z-scores and the balanced greedy (pointer form) for floor(5 % N) rows;
- G2IS:   the kNN graph (a FAISS inverted-file index, nprobe 4: the exact graph is O(N^2 D), ~10 h at 1 M on this CPU) and the
          walk for int(1 % N) rows from the target rows' principal components;
- LP:     per-cluster selection (``select_per_cluster``, lp_low at 10 %) over clusters of 52 rows (the official
          1,000 clusters for Alpaca's 52k), on seeded learning percentages;
- k-center: farthest-first traversal (``greedy_k_center``) on unit rows of the embedded model's RDS+ width
          (576): ``KCENTER_PICKS`` picks timed, the whole 10 % budget projected from the time per pick (each
          pick is a pass over [N, d]: O(k N d), hours at 1 M; timing every pick would take that long). Above 100k
          rows the pipeline uses the cell-restricted traversal instead: bench/kcenter.py.

``--stages`` picks some of them (less, bids and g2is run together on one gradient store; lp and kcenter need none).

Prints a table (seconds, peak RSS growth, scaling exponent from the smallest to the largest N) and writes
bench/results/policies.json. Peak memory is the process's high-water mark after each stage: stages run
in order, so a stage's figure is its own peak only when it is above the earlier ones.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def synthetic(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator, block: int = 100_000) -> np.ndarray:
    rows = np.empty((n, dim), np.float32)
    for start in range(0, n, block):
        size = min(block, n - start)
        chunk = centres[rng.integers(0, len(centres), size)] + rng.standard_normal((size, dim), np.float32) * 0.6
        rows[start : start + size] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return rows


KCENTER_PICKS, KCENTER_WIDTH, LP_CLUSTER_ROWS = 200, 576, 52
STAGES = ("less", "bids", "g2is", "lp", "kcenter")


def run_lp_kcenter(n: int, stages: list[str]) -> dict:
    from nait_pipeline.lib.methods.baselines.kcenter import greedy_k_center
    from nait_pipeline.lib.methods.lp import lp_math

    rng = np.random.default_rng(0)
    timings = {}
    if "lp" in stages:
        ids = [f"pool-{i:07d}" for i in range(n)]
        clusters = rng.integers(0, max(1, n // LP_CLUSTER_ROWS), n)
        lp = rng.uniform(0, 1, n)
        started = time.perf_counter()
        chosen = lp_math.select_per_cluster(ids, lp, clusters, np.zeros(n, bool), 10.0, "low")
        timings["lp_s"] = round(time.perf_counter() - started, 2)
        timings["lp_rows"] = len(chosen)
    if "kcenter" in stages:
        points = rng.standard_normal((n, KCENTER_WIDTH), dtype=np.float32)
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        started = time.perf_counter()
        greedy_k_center(points, KCENTER_PICKS, 0)
        per_pick = (time.perf_counter() - started) / KCENTER_PICKS
        timings["kcenter_s_per_pick"] = round(per_pick, 4)
        timings["kcenter_projected_s"] = round(per_pick * math.ceil(0.1 * n))
        timings["kcenter_peak_mb"] = peak_rss_mb()
    return timings


def run(n: int, dim: int, m: int, k: int, stages: list[str]) -> dict:
    from nait_pipeline.lib.methods.gradients import bids_math, g2is_math, less_math

    timings = {"rows": n, **run_lp_kcenter(n, stages)}
    if not {"less", "bids", "g2is"} & set(stages):
        return timings
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, dim)).astype(np.float32) / math.sqrt(dim) * 3
    pool = synthetic(n, dim, centres, rng)
    targets = synthetic(m, dim, centres[:30], rng)
    subtasks = [f"task{j % 10}" for j in range(m)]

    started = time.perf_counter()
    matrix = less_math.instance_matrix([pool], [targets], [1.0])
    less_math.subtask_scores(matrix, subtasks)
    timings["less_s"] = round(time.perf_counter() - started, 2)
    timings["less_peak_mb"] = peak_rss_mb()

    started = time.perf_counter()
    z = bids_math.column_zscore(matrix, [f"t{j}" for j in range(m)])
    del matrix
    picked = bids_math.balanced_greedy(z, math.floor(0.05 * n))
    timings["bids_s"] = round(time.perf_counter() - started, 2)
    timings["bids_rows"] = len(picked)
    timings["bids_peak_mb"] = peak_rss_mb()
    del z

    started = time.perf_counter()
    graph = g2is_math.knn_graph_faiss(pool, k)
    timings["g2is_graph_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    core = g2is_math.core_knowledge(targets, 0.5)
    walk = g2is_math.gradient_walk(pool, core, graph, 0.01, 0.8)
    timings["g2is_walk_s"] = round(time.perf_counter() - started, 2)
    timings["g2is_rows"] = len(walk.selected)
    timings["g2is_shortfall"] = walk.shortfall
    timings["g2is_components"] = len(core.weights)
    timings["g2is_peak_mb"] = peak_rss_mb()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--targets", type=int, default=300)
    parser.add_argument("--k", type=int, default=64, help="graph neighbours per row")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    args = parser.parse_args()

    import torch

    rows = []
    for n in args.sizes:
        print(f"N = {n:,} ...", flush=True)
        rows.append(run(n, args.dim, args.targets, args.k, args.stages))
        print(json.dumps(rows[-1]), flush=True)
    def width(stage: str) -> int:
        return max(14, len(stage))

    stages = [s for s in ("less_s", "bids_s", "g2is_graph_s", "g2is_walk_s", "lp_s", "kcenter_projected_s")
              if all(s in row for row in rows)]
    lines = [f"synthetic gradient store: dim {args.dim}, {args.targets} target rows, graph k={args.k} "
             f"(FAISS IVF, nprobe 4), {torch.get_num_threads()} threads",
             f"{'rows':>10}" + "".join(f"{s[:-2]:>{width(s)}}" for s in stages) + f"{'peak RSS MB':>13}"]
    for row in rows:
        lines.append(f"{row['rows']:>10,}" + "".join(f"{row[s]:>{width(s)}.1f}" for s in stages) +
                     f"{max(row[k] for k in row if k.endswith('_peak_mb')):>13,}")
    growth = {}
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        ratio = last["rows"] / first["rows"]
        growth = {s: round(math.log(max(last[s], 1e-3) / max(first[s], 1e-3)) / math.log(ratio), 2) for s in stages}
        lines.append(f"{'growth':>10}" + "".join(f"{'N^' + str(growth[s]):>{width(s)}}" for s in stages))
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "policies.json").write_text(json.dumps({"args": vars(args), "rows": rows, "growth": growth,
                                                       "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
