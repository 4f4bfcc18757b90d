"""A new capability scored and selected over pools of 100k to 1M rows, each stage beside a raw read.

    nice .venv/bin/python bench/scale.py [--sizes 100000 300000 1000000] [--configs embedded wide_compact]
                                          [--dir /tmp/nait_scale]

Builds, per (store width, pool size), a lake in the pipeline's real format: the pool table (with texts for
the SQL join), one forward store file per 2,048-row shard written by ``write_features`` (float16 per-layer
token means, the float32 RDS+ embedding, the scalars), a 256-row in-domain set, the template prefix and the
capability's directions fitted by the pipeline's own ``write_directions``. Widths: ``embedded`` is the
embedded model's full width (30 x 576); ``wide_compact`` is what the compact default keeps of a 32-layer,
4,096-wide model (every 3rd layer as 4-bit codes: 11 x 4,096, the embedding at 8 bits, ~28 KiB per row).
Pool rows hold no first-token state: the compact stores drop it and the scorers never read it, so the
full-width store's read is the same (its disk twice this). Stored values repeat one seeded block per shard
(shifted per shard; a coded store's shards are the first shard's codes under their own ids): scoring
costs do not depend on the values. Each lake is deleted after it is measured; a cell over this machine's
disk is skipped with the reason.

Each stage runs in its own process (peak RSS is that process's high-water mark). A lake smaller than the
page cache (24 GiB here) is read warm, as the build left it; a larger one (1M rows) from disk, as a real run
would: the raw read beside each stage is read the same way, so the ratio compares like with like.

- raw read: every shard file's bytes, in 64 MiB reads (the floor for any reader of the store);
- NAIT, NAIT-C, RDS+: ``score_capability`` (the store read shard by shard, the scores written); NAIT-C
  three times: first on a lake where no shard's pool moments are kept yet (the first capability's cost),
  then with them kept (any later capability's), then also without the nearest in-domain rows
  (``nearest_targets = 0``: one read of the store);
- select: ``run_selection`` for NAIT (top 10 %), RDS+ round-robin over the 256 in-domain rows, RDS+ top-B;
- SQL: the warehouse views built, then ``top_subset_examples`` (the subset joined with the pool's text);
- gradients (with the first config only: the kind is 1,024-d at any model width): a warmup record with 4
  checkpoints and one gradient store file per shard and checkpoint (float32 unit rows, 16 KiB per row), a
  256-row target set in 4 subtasks; its raw read, LESS's scorer (the [N, 256] influence matrix and the
  capability score) and the LESS and BIDS policies on it.

Prints a table (seconds, peak RSS, the ratio to the raw read of the same kind, the growth exponent from the
smallest to the largest size) and writes bench/results/scale.json. G2IS's graph and walk at the same sizes
are ``bench/policies.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CONFIGS = {"embedded": (30, 576, 0), "wide_compact": (11, 4096, 4)}  # layers, width, bits per value
SHARD, TARGETS, CAPABILITY = 2048, 256, "math"
STAGES = ("raw read", "nait", "nait_c", "nait_c moments kept", "nait_c moments kept, no nearest", "rds", "select nait", "select rds_round_robin", "select rds_top_b", "sql top-k",
          "raw read gradients", "less", "select less", "select bids")
GRADIENT_STAGES = ("raw read gradients", "less", "select less", "select bids")
CHECKPOINTS, GRADIENT_DIM = 4, 1024  # LESS's default warmup (4 epochs) and projection width


def gradient_bytes(rows: int) -> int:
    return rows * CHECKPOINTS * GRADIENT_DIM * 4


def lake_bytes(rows: int, layers: int, width: int, bits: int = 0) -> int:
    if bits:  # codes, the embedding at 8 bits, outlier dimensions, each shard's codebook
        return rows * (layers * width * bits // 8 + width + (layers + 1) * width // 50 + 64) + \
            -(-rows // SHARD) * layers * width * 2 ** bits * 2 * 3
    return rows * (layers * width * 2 + width * 4 + 64)


def build(root: Path, rows: int, layers: int, width: int, gradients: bool, bits: int = 0) -> None:
    import numpy as np
    import pyarrow as pa

    from nait_pipeline.lib.features.feature_store import write_features
    from nait_pipeline.lib.features.featurize import Features
    from nait_pipeline.lib.io.contract import CONTAMINATION_SCHEMA, POOL_SCHEMA, QUARANTINE_SCHEMA, ensure_contract_tables
    from nait_pipeline.lib.io.hashing import sha256_lines
    from nait_pipeline.lib.io.lake import read_metadata, read_table, write_json, write_parquet
    from nait_pipeline.lib.io.layout import LakeLayout
    from nait_pipeline.lib.io.pool_view import shard_input_version
    from nait_pipeline.lib.methods.nait.nait_method import write_directions
    from nait_pipeline.lib.models.model_io import ModelInfo

    layout = LakeLayout(root / "lake")
    rng = np.random.default_rng(0)
    identity = {"model_id": "scale@0", "template_hash": "t", "featurizer": {"bench": "scale"}}
    ids = [f"pool-{i:07d}" for i in range(rows)]
    shards = [f"s{i // SHARD:05d}" for i in range(0, rows, SHARD)]
    hashes = [f"h{i}" for i in range(rows)]
    sources = np.array(["alpaca_cleaned", "flan_cot/gsm8k", "code_alpaca_2k"])[np.arange(rows) % 3]
    shard_of = np.repeat(np.array(shards), SHARD)[:rows]
    pool = pa.table({
        "example_id": ids, "pool": ["bench"] * rows, "source": sources, "file": ["bench.parquet"] * rows,
        "row_index": np.arange(rows), "instruction": [f"Question {i} on topic {i % 997}: explain it." for i in range(rows)],
        "input": [""] * rows, "output": [" ".join(["answer"] * (5 + i % 60)) for i in range(rows)],
        "content_hash": hashes, "status": ["kept"] * rows, "duplicate_of": pa.nulls(rows, pa.string()),
        "shard": shard_of, "messages": pa.nulls(rows, pa.string()), "ingest_flag": pa.nulls(rows, pa.string())},
        schema=POOL_SCHEMA)
    pool_version = sha256_lines(f"{i}\t{h}\t{s}" for i, h, s in zip(ids, hashes, shard_of))[:16]
    write_parquet(pool, layout.pool_examples, {"pool_version": pool_version})
    write_parquet(QUARANTINE_SCHEMA.empty_table(), layout.pool_quarantine)
    write_parquet(pa.table({"file": ["bench.parquet"], "rows_read": [rows], "sha256": ["s"]}), layout.pool_files)
    write_parquet(CONTAMINATION_SCHEMA.empty_table(), layout.pool_contamination,
                  {"contamination_version": "clean", "pool_version": pool_version})
    base = rng.standard_normal((SHARD, layers, width), dtype=np.float32)
    embedding = rng.standard_normal((SHARD, width), dtype=np.float32)
    lengths = rng.integers(20, 400, SHARD).astype(np.int32)
    for number, shard in enumerate(shards):
        start = number * SHARD
        n = min(SHARD, rows - start)
        features = Features(layer_mean=base[:n] + np.float32(0.01 * number), first_token=None, last_token=None,
                            rds_embedding=embedding[:n] + np.float32(0.01 * number),
                            response_loss=np.full(n, 1.5), n_tokens=lengths[:n], n_response_tokens=lengths[:n] // 2,
                            full_length=lengths[:n], truncated=np.zeros(n, bool), layers=list(range(1, layers + 1)))
        meta = {**identity, "store_version": shard,
                "input_version": shard_input_version(ids[start:start + n], hashes[start:start + n])}
        if bits and number:
            # Fitting codes costs seconds per wide shard: later shards reuse the first one's under their own ids.
            table = read_table(layout.pool_activations(shards[0])).slice(0, n)
            table = table.set_column(0, "example_id", pa.array(ids[start:start + n], pa.string()))
            first_meta = read_metadata(layout.pool_activations(shards[0]))
            write_parquet(table.replace_schema_metadata(None), layout.pool_activations(shard), {**first_meta, **meta},
                          use_dictionary=["example_id"],
                          compression={c: "none" if c.endswith(("_codes", "_exact")) else "zstd"
                                       for c in table.column_names})
            continue
        write_features(layout.pool_activations(shard), ids[start:start + n], features, meta, quantize_bits=bits)
    shift = rng.standard_normal((1, layers, width), dtype=np.float32)
    target = Features(layer_mean=base[:TARGETS] + shift, first_token=base[:TARGETS] * 3, last_token=None,
                      rds_embedding=embedding[:TARGETS] + shift[:, -1], response_loss=np.full(TARGETS, 1.0),
                      n_tokens=lengths[:TARGETS], n_response_tokens=lengths[:TARGETS] // 2,
                      full_length=lengths[:TARGETS], truncated=np.zeros(TARGETS, bool), layers=list(range(1, layers + 1)))
    write_features(layout.target_activations(CAPABILITY), [f"{CAPABILITY}-{i}" for i in range(TARGETS)], target,
                   {**identity, "store_version": f"target-{CAPABILITY}"})
    first = rng.standard_normal((layers, width)).astype(np.float32)
    write_parquet(pa.table({"layer": np.arange(1, layers + 1), "prefix_sum": list(first * 4),
                            "first_state": list(first)}), layout.template_prefix,
                  {"prefix_tokens": 4, "prefix_text": "<s>", "prefix_version": "p", "model_id": "scale@0",
                   "template_hash": "t"})
    write_directions(layout, CAPABILITY)
    if gradients:
        build_gradients(layout, ids, shards, hashes, rng)
    write_json(ModelInfo(model_id="scale@0", path="unused", architecture="synthetic", num_layers=layers,
                         hidden_size=width, vocab_size=0, template_hash="t", has_chat_template=True).as_dict(),
               layout.model_record)
    ensure_contract_tables(layout.root)


def build_gradients(layout, ids: list[str], shards: list[str], hashes: list[str], rng) -> None:
    """The gradient kind in its real format: a warmup record with CHECKPOINTS checkpoints, one store file per
    shard and checkpoint (unit float32 rows of GRADIENT_DIM), the capability's target gradients in 4 subtasks."""
    import numpy as np
    import pyarrow as pa

    from nait_pipeline.lib.features import gradients as gr
    from nait_pipeline.lib.io.contract import TARGET_SCHEMA
    from nait_pipeline.lib.io.lake import write_json, write_parquet
    from nait_pipeline.lib.io.pool_view import shard_input_version

    epochs = list(range(1, CHECKPOINTS + 1))
    rates = [2e-5 * (1 - e / (CHECKPOINTS + 1)) for e in epochs]
    write_json({"adapter_version": "bench", "model_id": "scale@0", "model_path": "unused", "template_hash": "t",
                "config": gr.WarmupConfig(epochs=CHECKPOINTS).as_dict(), "warmup_rows": 0,
                "checkpoints": [{"epoch": e, "mean_lr": r} for e, r in zip(epochs, rates)],
                "weights": [r / sum(rates) for r in rates]}, layout.warmup_record)
    projection = {"kind": "rademacher", "seed": 0, "dim": GRADIENT_DIM, "num_params": 10**6, "version": "1"}

    def unit(values):
        return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)

    def write(path, row_ids, vectors, preconditioning, epoch, input_version):
        identity = gr.store_identity("scale@0", "t", "bench", epoch, projection, preconditioning, 512, input_version)
        features = gr.GradientFeatures(ids=row_ids, vectors=vectors, zero_gradient=np.zeros(len(row_ids), bool),
                                       n_tokens=np.full(len(row_ids), 200), seconds=1.0)
        gr.write_gradient_store(path, features, {**identity, "store_version": gr.store_version(identity),
                                                 "stats": {"seconds": 1.0, "tokens": 200 * len(row_ids)}})

    base = unit(rng.standard_normal((SHARD, GRADIENT_DIM), dtype=np.float32))
    for epoch in epochs:
        for number, shard in enumerate(shards):
            start = number * SHARD
            n = min(SHARD, len(ids) - start)
            vectors = unit(np.roll(base[:n], number + epoch, axis=1))  # a different row set per shard, same cost
            write(layout.pool_gradients(shard, epoch), ids[start:start + n], vectors, "adam", epoch,
                  shard_input_version(ids[start:start + n], hashes[start:start + n]))
    target_ids = [f"{CAPABILITY}-{i}" for i in range(TARGETS)]
    write_parquet(pa.Table.from_pylist([dict(
        example_id=t, capability=CAPABILITY, task=f"{CAPABILITY}/task{i % 4}", split="dev", file="bench",
        prompt=f"prompt {t}", answer=f"answer {t}", extra_json="{}") for i, t in enumerate(target_ids)],
        schema=TARGET_SCHEMA), layout.target_selection(CAPABILITY))
    for epoch in epochs:
        write(layout.target_gradients(CAPABILITY, epoch), target_ids,
              unit(rng.standard_normal((TARGETS, GRADIENT_DIM), dtype=np.float32)), "sgd", epoch, "bench-targets")


def stage(root: Path, what: str) -> dict:
    """One stage, in this (child) process."""
    from nait_pipeline.lib.io.layout import LakeLayout
    from nait_pipeline.lib.io.pool_view import PoolView
    from nait_pipeline.lib.methods import METHODS, scorers
    from nait_pipeline.lib.methods.run import run_selection, score_capability
    from nait_pipeline.lib.models.model_io import ModelInfo

    layout = LakeLayout(root / "lake")
    started = time.perf_counter()
    result = None
    if what in ("raw read", "raw read gradients"):
        buffer = bytearray(64 * 2**20)
        result = 0
        shards = PoolView.open(layout).shards
        files = ([layout.pool_activations(s) for s in shards] if what == "raw read" else
                 [layout.pool_gradients(s, e) for s in shards for e in range(1, CHECKPOINTS + 1)])
        for path in files:
            with open(path, "rb", buffering=0) as handle:
                while count := handle.readinto(buffer):
                    result += count
    elif what in ("nait", "nait_c", "rds", "less") or what.startswith("nait_c "):
        # "nait_c" runs first on a lake without kept moments (the first capability computes them); the next
        # stages find them kept, as any later capability does.
        scorer = scorers()[what.split()[0]]
        params = scorer.params(nearest_targets=0) if what.endswith("no nearest") else scorer.params()
        result = len(score_capability(layout, scorer, CAPABILITY, params).table)
    elif what.startswith("select "):
        method = METHODS[what.split()[1]]
        records = run_selection(layout, method, method.params(), [CAPABILITY], ModelInfo.read(layout))
        result = {r["capability"]: r["size"] for r in records} if records and "size" in records[0] else len(records)
    elif what == "sql top-k":
        from nait_pipeline.lib.io import sql

        db = root / "warehouse.duckdb"
        sql.build_warehouse(db, layout.root)
        built = time.perf_counter() - started
        rows = sql.run_query(db, "top_subset_examples", {"method": "nait", "capability": CAPABILITY, "k": 100})
        result = {"rows": rows.num_rows, "warehouse_seconds": round(built, 2)}
    else:
        raise ValueError(what)
    return {"stage": what, "seconds": round(time.perf_counter() - started, 2), "result": result,
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> int:
    """This process's high-water resident set. Not getrusage: a child started by fork and exec reports the
    parent's size at the fork there (the parent built the lake), where VmHWM is this program's own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def growth(small: dict, large: dict) -> float | None:
    """The exponent b of seconds ~ N^b between two sizes (1: linear)."""
    if not small or not large or small["seconds"] <= 0:
        return None
    return round(math.log(large["seconds"] / small["seconds"]) / math.log(large["rows"] / small["rows"]), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--dir", default="/tmp/nait_scale")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(stage(Path(args.child[0]), args.child[1])))
        return
    RESULTS.mkdir(exist_ok=True)
    out_path = RESULTS / "scale.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else []
    for config in args.configs:
        layers, width, bits = CONFIGS[config]
        for rows in args.sizes:
            root = Path(args.dir) / f"{config}-{rows}"
            # The gradient kind is the same at any model width (1,024-d projections): built with the first config.
            gradients = config == args.configs[0] and any(s in GRADIENT_STAGES for s in args.stages)
            need = lake_bytes(rows, layers, width, bits) + (gradient_bytes(rows) if gradients else 0)
            free = shutil.disk_usage(Path(args.dir).parent if not Path(args.dir).exists() else args.dir).free
            if need > 0.8 * free:
                print(f"{config} {rows:,}: skipped, the lake needs {need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free")
                results.append({"config": config, "rows": rows, "skipped": f"needs {need / 2**30:.0f} GiB of disk, "
                                f"{free / 2**30:.0f} GiB free"})
                continue
            shutil.rmtree(root, ignore_errors=True)
            started = time.perf_counter()
            build(root, rows, layers, width, gradients, bits)
            print(f"{config} {rows:,}: lake built in {time.perf_counter() - started:.0f} s "
                  f"({sum(p.stat().st_size for p in (root / 'lake').rglob('*.parquet')) / 2**30:.1f} GiB)", flush=True)
            for what in [s for s in args.stages if gradients or s not in GRADIENT_STAGES]:
                done = subprocess.run([sys.executable, __file__, "--child", str(root), what], capture_output=True,
                                      text=True)
                if done.returncode:
                    record = {"stage": what, "error": done.stderr.strip().splitlines()[-1]}
                else:
                    record = json.loads(done.stdout.strip().splitlines()[-1])
                record.update(config=config, rows=rows, layers=layers, width=width, bits=bits)
                results = [r for r in results if (r.get("config"), r.get("rows"), r.get("stage")) !=
                           (config, rows, what)] + [record]
                print(f"  {what}: {record.get('seconds', '-')} s, peak {record.get('peak_rss_mb', '-')} MB"
                      + (f" ERROR {record['error']}" if "error" in record else ""), flush=True)
                out_path.write_text(json.dumps(results, indent=2))
            shutil.rmtree(root, ignore_errors=True)
    print_table(results)


def print_table(results: list[dict]) -> None:
    done = [r for r in results if "seconds" in r]
    for config in dict.fromkeys(r["config"] for r in done):
        sizes = sorted({r["rows"] for r in done if r["config"] == config})
        print(f"\n{config}: seconds (peak RSS MB, x raw read)")
        print("| stage | " + " | ".join(f"{n:,}" for n in sizes) + " | growth |")
        print("|---|" + "---|" * (len(sizes) + 1))
        for what in STAGES:
            cells, by_size = [], {}
            for n in sizes:
                record = next((r for r in done if (r["config"], r["rows"], r["stage"]) == (config, n, what)), None)
                raw_stage = "raw read gradients" if what in GRADIENT_STAGES else "raw read"
                raw = next((r for r in done if (r["config"], r["rows"], r["stage"]) == (config, n, raw_stage)), None)
                by_size[n] = record
                if record is None:
                    cells.append("-")
                    continue
                ratio = f", {record['seconds'] / raw['seconds']:.2f}x" if raw and what != raw_stage else ""
                cells.append(f"{record['seconds']:.1f} ({record['peak_rss_mb']:,}{ratio})")
            exponent = growth(by_size[sizes[0]], by_size[sizes[-1]]) if len(sizes) > 1 else None
            print(f"| {what} | " + " | ".join(cells) + f" | {exponent if exponent is not None else '-'} |")


if __name__ == "__main__":
    main()
