"""Featurize one whole pool through the pipeline's own assets, then time scoring a capability from the store.

    NAIT_DATA_DIR=../shared/data NAIT_STORE_DIR=data/full_pool \
        .venv/bin/python bench/full_pool.py --pool alpaca_cleaned --capability math

Resumable: shards already in the store are reused (the asset's own rule), so a killed run picks up
where it stopped and the wall time it reports covers only this invocation's work. Writes
bench/results/full_pool.json with wall time, tokens/s, store size and the scoring time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq

from nait_pipeline.cli import capabilities, run_steps
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.settings import Settings

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", default="alpaca_cleaned")
    parser.add_argument("--capability", default="math")
    args = parser.parse_args()
    settings = Settings.from_env()
    layout = LakeLayout(settings.lake_dir)
    os.environ.setdefault("DAGSTER_HOME", str(settings.store_dir / "dagster_home"))

    run_steps([(["base_model", "it_pool"], None)])
    kept = pq.read_table(layout.pool_examples, columns=["shard", "pool"], filters=[("status", "=", "kept")])
    shards = sorted({s for s, p in zip(kept.column("shard").to_pylist(), kept.column("pool").to_pylist())
                     if p == args.pool})
    done_before = [s for s in shards if layout.pool_activations(s).exists()]
    started = time.perf_counter()
    run_steps([(["pool_activations"], shards)])
    featurize_seconds = time.perf_counter() - started

    tokens = examples = 0
    store_bytes = 0
    for shard in shards:
        path = layout.pool_activations(shard)
        meta = pq.read_table(path, columns=["n_tokens"])
        examples += len(meta)
        tokens += int(meta.column("n_tokens").to_numpy().sum())
        store_bytes += path.stat().st_size
    new_tokens = sum(int(pq.read_table(layout.pool_activations(s), columns=["n_tokens"]).column("n_tokens")
                         .to_numpy().sum()) for s in shards if s not in done_before)

    if args.capability not in capabilities(settings):  # registers the capability partitions
        raise SystemExit(f"no capability {args.capability!r} in {settings.data_dir / 'targets'}")
    run_steps([(["target_sets", "target_activations", "capability_directions"], [args.capability])])
    scoring_started = time.perf_counter()
    run_steps([(["nait_scores"], [args.capability])])
    scoring_seconds = time.perf_counter() - scoring_started
    # The asset also reports its own read and score times, without Dagster's run overhead.
    score_meta = pq.read_metadata(layout.scores("nait", args.capability))

    result = {
        "pool": args.pool,
        "shards": len(shards),
        "shards_reused": len(done_before),
        "examples": examples,
        "tokens": tokens,
        "featurize_wall_s": round(featurize_seconds, 1),
        "featurize_tokens_per_s": round(new_tokens / featurize_seconds, 1) if new_tokens else None,
        "store_bytes": store_bytes,
        "store_gib": round(store_bytes / 2**30, 3),
        "score_new_capability_wall_s": round(scoring_seconds, 2),
        "scored_rows": score_meta.num_rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "full_pool.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
