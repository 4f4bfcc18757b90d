"""Featurizing the same pool slice in the run's own process and on Ray workers (1 and 2): time and overhead.

Ingests ``--rows`` rows of a shared pool in shards of ``--shard-rows`` with the embedded model, then
featurizes every shard's forward store three times from scratch: the local executor (this process, torch on
every core), Ray with one worker (every core) and Ray with two workers (one core each). Each run's store
versions must equal the local run's. Reports wall time (Ray's start and the workers' model loads included),
the ratio to local, and the overhead per shard: wall time less the featurizer's own seconds (summed over
workers, divided by their number), per shard; it holds the model loads and the shard hand-offs.
Prints a table and writes ``bench/results/ray_executor.json``.

    nice .venv/bin/python bench/ray_executor.py [--rows 192] [--shard-rows 32] [--pool alpaca_cleaned]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ingest(data_dir: Path, store: Path, pool: str, rows: int, shard_rows: int):
    import dagster as dg
    import pyarrow.parquet as pq

    from nait_pipeline.defs.assets.model import base_model
    from nait_pipeline.defs.assets.pool import it_pool
    from nait_pipeline.defs.resources import LakeResource

    source = Path(os.environ.get("NAIT_DATA_DIR") or ROOT.parent / "shared" / "data") / "pools" / f"{pool}.parquet"
    (data_dir / "pools").mkdir(parents=True)
    pq.write_table(pq.read_table(source).slice(0, rows), data_dir / "pools" / f"{pool}.parquet")
    resource = LakeResource(data_dir=str(data_dir), store_dir=str(store))
    config = {"ops": {"it_pool": {"config": {"settle_seconds": 0.0, "shard_size": shard_rows}}}}
    with dg.instance_for_test() as instance:
        assert dg.materialize([base_model, it_pool], instance=instance, resources={"pipeline": resource},
                              run_config=config).success
    return resource


def featurize(resource, executor, label: str) -> dict:
    from nait_pipeline.lib.execution.shard_tasks import FORWARD, ShardTask, verify_outcome
    from nait_pipeline.lib.features.featurize import FeaturizerSpec

    settings, layout = resource.settings, resource.layout
    shards = resource.pool().shards
    for shard in shards:  # every run computes every shard
        layout.pool_activations(shard).unlink(missing_ok=True)
    started = time.perf_counter()
    with executor.start(settings, len(shards)) as workers:
        device = workers.device("auto")
        tasks = [ShardTask(FORWARD, s, {"spec": FeaturizerSpec(dtype="float32"), "device": device}) for s in shards]
        outcomes = workers.run(tasks, lambda task, outcome: verify_outcome(settings, task, outcome))
    wall = time.perf_counter() - started
    compute = sum(o.stats["seconds"] for o in outcomes)
    workers_used = len({o.worker for o in outcomes})
    row = {"executor": label, "shards": len(shards), "wall_s": round(wall, 1),
           "featurize_s": round(compute, 1), "workers_used": workers_used,
           "versions": [o.versions[0] for o in outcomes]}
    print(f"{label}: {wall:.1f} s wall, {compute:.1f} s featurizing, {workers_used} worker(s)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=192)
    parser.add_argument("--shard-rows", type=int, default=32)
    parser.add_argument("--pool", default="alpaca_cleaned")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import ray
    import torch

    from nait_pipeline.lib.execution.executors import ShardExecutor

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="nait-ray-bench-") as scratch:
        resource = ingest(Path(scratch) / "data", Path(scratch) / "store", args.pool, args.rows, args.shard_rows)
        torch.set_num_threads(cores)
        rows = [featurize(resource, ShardExecutor("local"), "local (this process)")]
        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started
        rows.append(featurize(resource, ShardExecutor("ray", workers=1, cpus_per_worker=cores, gpus_per_worker=0),
                              "ray, 1 worker"))
        rows.append(featurize(resource, ShardExecutor("ray", workers=2, cpus_per_worker=max(1, cores // 2),
                                                      gpus_per_worker=0), "ray, 2 workers"))
        ray.shutdown()
    local = rows[0]
    identical = all(row["versions"] == local["versions"] for row in rows)
    print(f"\n{args.rows} rows of {args.pool} in {local['shards']} shards; {cores} cores; Ray start "
          f"{ray_start:.1f} s (not in the rows below)")
    print("| executor | wall | featurizing (sum over workers) | vs local | overhead per shard |\n|---|---|---|---|---|")
    for row in rows:
        row["ratio"] = round(row["wall_s"] / local["wall_s"], 2)
        row["overhead_per_shard_s"] = round((row["wall_s"] - row["featurize_s"] / row["workers_used"])
                                            / row["shards"], 2)
        print(f"| {row['executor']} | {row['wall_s']} s | {row['featurize_s']} s | "
              f"{row['ratio']}x | {row['overhead_per_shard_s']} s |")
    print(f"identical store versions: {identical}")
    out = ROOT / "bench" / "results" / "ray_executor.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": args.rows, "shard_rows": args.shard_rows, "pool": args.pool, "cores": cores,
                               "ray_start_s": round(ray_start, 1), "identical": identical,
                               "runs": [{k: v for k, v in r.items() if k != "versions"} for r in rows]}, indent=2))
    if not identical:
        raise SystemExit("store versions differ between executors")


if __name__ == "__main__":
    main()
