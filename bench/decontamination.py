"""Decontamination of the whole shared pool against every test item the loop evaluates on.

    .venv/bin/python bench/decontamination.py [--ngram 13] [--threshold 0.5]

Reads every pool file of `$NAIT_DATA_DIR/pools` (90k rows) and the test split of every capability (~23k
items), runs `lib/data/decontamination.py` (the code the `pool_contamination` asset runs) and prints the
time, the contaminated rows by benchmark and by pool source, and one example per benchmark. Writes
bench/results/decontamination.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngram", type=int, default=13)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from nait_pipeline.lib.data import targets
    from nait_pipeline.lib.data.decontamination import find_contamination
    from nait_pipeline.lib.io.contract import TARGET_SCHEMA
    from nait_pipeline.lib.io.settings import CAPABILITIES, Settings

    data_dir = Settings.from_env().data_dir
    started = time.perf_counter()
    pools = [pq.read_table(path, columns=["id", "instruction", "input", "output", "source"])
             for path in sorted((data_dir / "pools").glob("*.parquet"))]
    pool = pa.concat_tables(pools).rename_columns(["example_id", "instruction", "input", "output", "source"])
    capabilities = list(CAPABILITIES) + sorted(targets.user_capabilities(data_dir / "targets", []))
    tests = pa.Table.from_pylist([row for c in capabilities for row in targets.evaluation_rows(data_dir / "targets", c).rows],
                                 schema=TARGET_SCHEMA)
    read_seconds = time.perf_counter() - started
    result = find_contamination(pool, tests, n=args.ngram, threshold=args.threshold)
    rows = result.table.to_pylist()
    source = dict(zip(pool.column("example_id").to_pylist(), pool.column("source").to_pylist()))
    by_benchmark = Counter()
    for benchmark, example in {(r["benchmark"], r["example_id"]) for r in rows}:
        by_benchmark[benchmark] += 1
    by_source = Counter(source[i] for i in {r["example_id"] for r in rows})
    print(f"{len(pool):,} pool rows x {len(tests):,} test items ({', '.join(capabilities)}): "
          f"{result.stats['seconds']:.1f} s (+{read_seconds:.1f} s reading), n={args.ngram}, threshold {args.threshold}")
    print(f"contaminated rows: {result.stats['contaminated_rows']:,} ({result.stats['matches']:,} row x field x item matches; "
          f"{sum(r['exact_prompt'] for r in rows)} exact prompts)")
    print("by benchmark:", dict(by_benchmark.most_common()))
    print("by pool source:", dict(by_source.most_common()))
    prompts = {r["example_id"]: r["prompt"] for r in tests.select(["example_id", "prompt"]).to_pylist()}
    texts = {r["example_id"]: r for r in pool.select(["example_id", "instruction", "output"]).to_pylist()}
    examples = {}
    for r in sorted(rows, key=lambda r: -r["coverage"]):
        if r["benchmark"] not in examples:
            examples[r["benchmark"]] = {**r, "test_prompt": prompts[r["test_id"]][:300],
                                        "pool_text": texts[r["example_id"]][r["field"] if r["field"] != "input"
                                                                            else "instruction"][:300]}
    for benchmark, example in examples.items():
        print(f"\n[{benchmark}] {example['example_id']} ({example['field']}, coverage {example['coverage']}) vs "
              f"{example['test_id']}\n  test: {example['test_prompt']!r}\n  pool: {example['pool_text']!r}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "decontamination.json"
    out.write_text(json.dumps({**result.stats, "read_seconds": round(read_seconds, 2),
                               "by_benchmark": dict(by_benchmark), "by_source": dict(by_source),
                               "examples": examples}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
