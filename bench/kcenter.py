"""k-center at growing pool sizes: exact farthest-first against the cell-restricted traversal the pipeline
uses above ``exact_limit`` rows (``lib/methods/baselines/kcenter.py``).

    nice .venv/bin/python bench/kcenter.py [--sizes 100000 300000 1000000] [--neighbour-cells 4 16]
                                           [--exact-up-to 100000] [--radius-up-to 300000]

Synthetic unit rows of the embedded model's RDS+ width (576) with the structure of real embeddings: a mixture of
2,000 centres in a 32-dimensional subspace plus isotropic noise, drawn in blocks. Per size N, a 10 % budget:

- cells: seeded spherical k-means (~1,024 rows per cell) and the assignment of every row;
- traversal: the cell-restricted farthest-first, each pick covering its cell and ``--neighbour-cells`` nearest
  cells (one setting per run of the traversal on the same cells);
- exact: farthest-first over every row (k passes over [N, d]) up to ``--exact-up-to`` rows;
- radius: the true covering radius of each subset (every row's nearest pick, blocked products) where it fits
  in time, and the bound the cell-restricted traversal records; a seeded random subset's radius for scale.

Prints a table and writes bench/results/kcenter.json. Peak RSS is the process's high-water mark.
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
WIDTH, SUBSPACE, CENTRES = 576, 32, 2000


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def embeddings(n: int, seed: int = 0, block: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((SUBSPACE, WIDTH)).astype(np.float32)
    centres = rng.standard_normal((CENTRES, SUBSPACE)).astype(np.float32)
    rows = np.empty((n, WIDTH), np.float32)
    for start in range(0, n, block):
        size = min(block, n - start)
        latent = centres[rng.integers(0, CENTRES, size)] + rng.standard_normal((size, SUBSPACE), np.float32) * 0.5
        chunk = latent @ basis + rng.standard_normal((size, WIDTH), np.float32) * 0.5
        rows[start : start + size] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return rows


def covering_radius(points: np.ndarray, chosen: list[int], block: int = 16_384) -> float:
    centers = points[chosen]
    best = -1.0
    for start in range(0, len(points), block):
        nearest = (points[start : start + block] @ centers.T).max(axis=1).min()
        best = max(best, math.sqrt(max(0.0, 2 - 2 * float(nearest))))
    return best


def run(n: int, neighbour_settings: list[int], exact_up_to: int, radius_up_to: int) -> list[dict]:
    from nait_pipeline.lib.methods.baselines.kcenter import (KCenterParams, cell_k_center, greedy_k_center,
                                                              spherical_cells)

    points = embeddings(n)
    k = math.ceil(0.1 * n)
    n_cells = min(k, math.ceil(n / KCenterParams.cell_rows))
    started = time.perf_counter()
    cells = spherical_cells(points, n_cells, seed=0)
    cells_s = round(time.perf_counter() - started, 1)
    rows = []
    for neighbours in neighbour_settings:
        row = {"rows": n, "picks": k, "cells": n_cells, "neighbour_cells": neighbours, "cells_s": cells_s}
        started = time.perf_counter()
        chosen, scores = cell_k_center(points, k, cells, neighbours)
        row["traversal_s"] = round(time.perf_counter() - started, 1)
        row["cell_restricted_s"] = round(row["cells_s"] + row["traversal_s"], 1)
        row["radius_bound"] = round(float(scores[chosen[-1]]), 4)
        row["peak_rss_mb"] = peak_rss_mb()
        if n <= radius_up_to:
            row["radius_cell_restricted"] = round(covering_radius(points, chosen), 4)
        print(json.dumps(row), flush=True)
        rows.append(row)
    reference = {"rows": n, "picks": k}
    if n <= radius_up_to:
        draw = np.random.default_rng(0).choice(n, size=k, replace=False).tolist()
        reference["radius_random"] = round(covering_radius(points, draw), 4)
    if n <= exact_up_to:
        started = time.perf_counter()
        exact, _ = greedy_k_center(points, k, 0)
        reference["exact_s"] = round(time.perf_counter() - started, 1)
        reference["radius_exact"] = round(covering_radius(points, exact), 4)
    print(json.dumps(reference), flush=True)
    for row in rows:
        row.update(reference)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--neighbour-cells", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--exact-up-to", type=int, default=100_000)
    parser.add_argument("--radius-up-to", type=int, default=300_000)
    args = parser.parse_args()
    rows = [row for n in args.sizes for row in run(n, args.neighbour_cells, args.exact_up_to, args.radius_up_to)]
    columns = ["rows", "picks", "cells", "neighbour_cells", "cells_s", "traversal_s", "cell_restricted_s", "exact_s",
               "radius_exact", "radius_cell_restricted", "radius_bound", "radius_random", "peak_rss_mb"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row.get(c, "")) for c in columns))
    for neighbours in args.neighbour_cells:
        same = [row for row in rows if row["neighbour_cells"] == neighbours]
        if len(same) > 1:
            first, last = same[0], same[-1]
            exponent = math.log(last["cell_restricted_s"] / max(first["cell_restricted_s"], 1e-3)) / \
                math.log(last["rows"] / first["rows"])
            print(f"neighbour_cells {neighbours}: time grows as N^{exponent:.2f} from {first['rows']:,} to "
                  f"{last['rows']:,} rows")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kcenter.json").write_text(json.dumps({"rows": rows, "width": WIDTH, "budget": 0.1}, indent=2))


if __name__ == "__main__":
    main()
