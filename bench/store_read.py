"""Scoring a new capability over a whole-pool activation store, against a raw read of the same files.

    .venv/bin/python bench/store_read.py [--rows 51941] [--dir /tmp/nait_store_bench]

Builds (once, reused) a synthetic store the size of the featurized alpaca_cleaned pool (51,941 rows,
26 shards of 2,048, 30 layers x 576, float16) in two layouts: the binary per-row layout the pipeline
writes now, and the fixed-size list layout of earlier versions. Each measurement runs in its own
process with a warm page cache (one untimed pass first), and reports wall time and peak RSS:

- raw read: the bytes of every shard file, read into memory (the floor for any reader);
- decode: Parquet decode of the `layer_mean` column of every shard;
- score: a new NAIT capability scored by the pipeline's own path (`score_capability`: store read,
  projection on 30 directions, aggregation, the scores file written).

Prints a table and writes bench/results/store_read.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LAYERS, WIDTH, SHARD = 30, 576, 2048


def build(root: Path, rows: int, layout_name: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nait_pipeline.lib.data.ingest import POOL_SCHEMA
    from nait_pipeline.lib.features.feature_store import write_features
    from nait_pipeline.lib.io.pool_view import shard_input_version
    from nait_pipeline.lib.features.featurize import Features
    from nait_pipeline.lib.io.lake import write_json, write_parquet
    from nait_pipeline.lib.io.layout import LakeLayout
    from nait_pipeline.lib.models.model_io import ModelInfo

    layout = LakeLayout(root / layout_name / "lake")
    if layout.model_record.exists():
        return
    rng = np.random.default_rng(0)
    base = rng.standard_normal((SHARD, LAYERS, WIDTH), dtype=np.float32)
    ids = [f"pool-{i:06d}" for i in range(rows)]
    shards = [f"s{i // SHARD:04d}" for i in range(rows)]
    identity = {"model_id": "bench@0", "template_hash": "t", "featurizer": {"bench": True}}
    for number, shard in enumerate(sorted(set(shards))):
        index = [i for i, s in enumerate(shards) if s == shard]
        n = len(index)
        values = base[:n] + np.float32(0.01 * number)
        features = Features(layer_mean=values, first_token=values[:, :1, :1], last_token=None,
                            rds_embedding=values[:, -1], response_loss=np.ones(n), n_tokens=np.full(n, 100, np.int32),
                            n_response_tokens=np.full(n, 50, np.int32), full_length=np.full(n, 100, np.int32),
                            truncated=np.zeros(n, bool))
        path = write_features(layout.pool_activations(shard), [ids[i] for i in index], features,
                              {**identity, "store_version": shard,
                               "input_version": shard_input_version([ids[i] for i in index], [str(i) for i in index])})
        if layout_name == "list":  # the layout earlier versions wrote: float16 fixed-size lists, zstd
            table = pq.read_table(path)
            flat = values.reshape(n, -1).astype(np.float16)
            table = table.set_column(table.schema.get_field_index("layer_mean"), "layer_mean",
                                     pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]))
            meta = table.schema.metadata
            pq.write_table(table.replace_schema_metadata(meta), path, compression="zstd",
                           use_dictionary=["example_id"])
    rows_table = [dict(example_id=i, pool="bench", source="bench", file="bench.parquet", row_index=k,
                       instruction="", input="", output="", content_hash=str(k), status="kept", duplicate_of=None,
                       shard=s) for k, (i, s) in enumerate(zip(ids, shards))]
    write_parquet(pa.Table.from_pylist(rows_table, schema=POOL_SCHEMA), layout.pool_examples, {"pool_version": "bench"})
    directions = rng.standard_normal((LAYERS, WIDTH)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    write_parquet(pa.table({"capability": ["math"] * LAYERS, "layer": list(range(1, LAYERS + 1)),
                            "direction": list(directions), "explained_variance_ratio": [0.5] * LAYERS,
                            "sign_flipped": [False] * LAYERS}),
                  layout.directions("math"), {"directions_version": "bench", "model_id": "bench@0", "template_hash": "t"})
    write_json(ModelInfo(model_id="bench@0", path="unused", architecture="synthetic", num_layers=LAYERS,
                         hidden_size=WIDTH, vocab_size=0, template_hash="t", has_chat_template=True).as_dict(),
               layout.model_record)


def measure(root: Path, layout_name: str, what: str) -> dict:
    """Runs in a child process: one untimed pass (warm cache), then the timed one."""
    import pyarrow.parquet as pq

    from nait_pipeline.lib.io.layout import LakeLayout
    from nait_pipeline.lib.io.pool_view import PoolView
    from nait_pipeline.lib.methods import scorers
    from nait_pipeline.lib.methods.run import score_capability

    layout = LakeLayout(root / layout_name / "lake")
    paths = [layout.pool_activations(s) for s in PoolView.open(layout).shards]

    def run():
        if what == "raw read":
            return sum(len(p.read_bytes()) for p in paths)
        if what == "decode":
            return sum(pq.read_table(p, columns=["layer_mean"]).nbytes for p in paths)
        nait = scorers()["nait"]
        return len(score_capability(layout, nait, "math", nait.params()).table)

    run()
    started = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - started
    return {"layout": layout_name, "what": what, "seconds": round(seconds, 3), "result": out,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=51_941)
    parser.add_argument("--dir", default="/tmp/nait_store_bench")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.dir)
    if args.child:
        print(json.dumps(measure(root, *args.child)))
        return
    for layout_name in ("binary", "list"):
        build(root, args.rows, layout_name)
    results = []
    for layout_name in ("binary", "list"):
        for what in ("raw read", "decode", "score"):
            done = subprocess.run([sys.executable, __file__, "--dir", str(root), "--child", layout_name, what],
                                  capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    size = {name: sum(p.stat().st_size for p in (root / name / "lake" / "features" / "pool_activations").glob("*.parquet"))
            for name in ("binary", "list")}
    print(f"{args.rows} rows x {LAYERS} layers x {WIDTH}, float16; store {size['binary'] / 2**30:.2f} GiB (binary), "
          f"{size['list'] / 2**30:.2f} GiB (list)")
    print(f"| layout | {' | '.join(r['what'] for r in results[:3])} | peak RSS (score) |")
    print("|---|---|---|---|---|")
    for name in ("binary", "list"):
        row = [r for r in results if r["layout"] == name]
        print(f"| {name} | " + " | ".join(f"{r['seconds']:.2f} s" for r in row) + f" | {row[-1]['peak_rss_mb']} MB |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "store_read.json").write_text(json.dumps({"rows": args.rows, "store_bytes": size,
                                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
