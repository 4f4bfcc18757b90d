"""Fault scenarios end to end, as a hostile user would cause them; prints scenario, expected, observed.

    .venv/bin/python bench/faults.py [--work /tmp/nait_faults] [--readers 4] [--seconds 20]

1. kill -9 during featurization, then run again (the real CLI on two pool shards);
2. two warehouse refreshes at once while reader processes query it in a loop;
3. a pool file overwritten in place (truncate, then write, as `cp` does) while it is ingested;
4. a pool file rewritten after featurization (same ids, new texts): scores, the shard sensor, export.

Writes bench/results/faults.json. Needs ../shared/data (NAIT_DATA_DIR) for the pool rows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv" / "bin" / "nait-pipeline")


def pool_rows(data_dir: Path, n: int, offset: int = 0) -> list[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(data_dir / "pools" / "alpaca_cleaned.parquet", columns=["instruction", "input", "output"])
    return table.slice(offset, n).to_pylist()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_inputs(work: Path, shared: Path) -> Path:
    data = work / "data"
    (data / "pools").mkdir(parents=True, exist_ok=True)
    (data / "targets").mkdir(exist_ok=True)
    write_jsonl(data / "pools" / "first.jsonl", pool_rows(shared, 120))
    write_jsonl(data / "pools" / "second.jsonl", pool_rows(shared, 120, offset=120))
    write_jsonl(data / "targets" / "tiny.jsonl",
                [{"prompt": f"What is {i} plus {i}?", "answer": f"{i} plus {i} is {2 * i}."} for i in range(6)])
    return data


def env_for(work: Path, data: Path) -> dict:
    return {**os.environ, "NAIT_DATA_DIR": str(data), "NAIT_STORE_DIR": str(work / "store"),
            "DAGSTER_HOME": str(work / "dagster_home"), "NAIT_SETTINGS": os.devnull, "NAIT_POOL_SAMPLE": ""}


def kill_during_featurization(work: Path, shared: Path) -> dict:
    data = make_inputs(work / "kill", shared)
    env = env_for(work / "kill", data)
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    lake = work / "kill" / "store" / "lake" / "features" / "pool_activations"
    victim = subprocess.Popen([CLI, "materialize", "--methods", "nait", "length"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    import dagster as dg

    deadline = time.time() + 900
    # Kill once the first shard is stored and the second one's run holds the cpu_heavy slot.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while not (any(p.name.startswith("first") for p in lake.glob("*.parquet"))
                   and instance.event_log_storage.get_concurrency_info("cpu_heavy").claimed_slots):
            if time.time() > deadline or victim.poll() is not None:
                return {"observed": "could not catch the run mid-featurization", "ok": False}
            time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in lake.glob("*.parquet")}
    started = time.perf_counter()
    again = subprocess.run([CLI, "materialize", "--methods", "nait", "length"], env=env, capture_output=True,
                           text=True, timeout=1800)
    recovered = [line for line in again.stdout.splitlines() if "recovered run" in line]
    reused = all(p.stat().st_mtime_ns == finished[p.name] for p in lake.glob("*.parquet") if p.name in finished)
    shards = [p for p in lake.glob("*.parquet") if not p.name.startswith("_")]
    ok = again.returncode == 0 and bool(recovered) and reused and len(shards) == 2
    return {"observed": f"rerun exit {again.returncode} in {time.perf_counter() - started:.0f} s; "
                        f"{len(recovered)} dead run recovered; finished shard reused: {reused}", "ok": ok}


def _reader(db: str, stop: float, out) -> None:
    import duckdb

    queries = errors = 0
    while time.time() < stop:
        try:
            with duckdb.connect(db, read_only=True) as con:
                con.execute("SELECT count(*) FROM pool_examples").fetchone()
            queries += 1
        except Exception:  # counted: any failure of a reader is what this scenario looks for
            errors += 1
    out.put((queries, errors))


def concurrent_refreshes(work: Path, readers: int, seconds: float) -> dict:
    from nait_pipeline.lib.io import sql

    lake = work / "kill" / "store" / "lake"
    db = work / "refresh.duckdb"
    sql.build_warehouse(db, lake)
    stop = time.time() + seconds
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_reader, args=(str(db), stop, out)) for _ in range(readers)]
    for proc in procs:
        proc.start()
    rebuilds, rebuild_errors = [0], []

    def refresh():
        while time.time() < stop:
            try:
                sql.build_warehouse(db, lake)
                rebuilds[0] += 1
            except Exception as exc:  # counted and shown
                rebuild_errors.append(str(exc))

    threads = [threading.Thread(target=refresh) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    queries, errors = sum(q for q, _ in results), sum(e for _, e in results)
    return {"observed": f"{rebuilds[0]} rebuilds by 2 concurrent refreshers, {len(rebuild_errors)} failed; "
                        f"{queries} reader queries from {readers} processes, {errors} failed",
            "ok": not rebuild_errors and errors == 0 and queries > 0}


def overwritten_during_ingest(work: Path, shared: Path) -> dict:
    from nait_pipeline.lib.data import ingest

    folder = work / "overwrite"
    folder.mkdir(parents=True, exist_ok=True)
    old, new = pool_rows(shared, 3000), pool_rows(shared, 3000, offset=3000)
    path = folder / "pool.jsonl"
    write_jsonl(path, old)
    old_outputs, new_outputs = {r["output"] for r in old}, {r["output"] for r in new}
    stop = time.time() + 10
    consistent = mixed = refused = 0

    def copier():
        version = 0
        while time.time() < stop:
            version += 1
            with open(path, "w") as handle:  # truncate, then write in pieces, as cp does
                for row in (new if version % 2 else old):
                    handle.write(json.dumps(row) + "\n")
            time.sleep(0.3)  # a pause between copies: an ingest may then read a whole file

    thread = threading.Thread(target=copier)
    thread.start()
    while time.time() < stop:
        try:
            rows = ingest.ingest_pools([path], settle_s=ingest.SETTLE_SECONDS).pool_rows
        except ingest.PoolFileError:
            refused += 1
            continue
        outputs = {r["output"] for r in rows}
        if outputs in (old_outputs, new_outputs):
            consistent += 1
        else:
            mixed += 1
    thread.join()
    return {"observed": f"{consistent} consistent snapshots, {refused} refused while the copy ran, {mixed} mixed",
            "ok": mixed == 0}


def rewritten_after_featurization(work: Path) -> dict:
    import pyarrow.parquet as pq

    from nait_pipeline.lib.features.watch import unfeaturized_shards
    from nait_pipeline.lib.io.layout import LakeLayout
    from nait_pipeline.lib.methods import METHODS, scorers
    from nait_pipeline.lib.methods.audit import ChangedSubsetError, export_subset
    from nait_pipeline.lib.methods.base import make_params
    from nait_pipeline.lib.methods.run import score_capability

    base = work / "kill"
    env = env_for(base, base / "data")
    layout = LakeLayout(base / "store" / "lake")
    current = pq.read_table(layout.current_subsets_dir / "length.parquet").column("subset_version")[0].as_py()
    path = base / "data" / "pools" / "first.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    write_jsonl(path, [{**r, "output": r["output"] + " (revised)"} for r in rows])
    subprocess.run([CLI, "materialize", "--stage", "foundation"], env=env, capture_output=True, check=True)
    stale = unfeaturized_shards(layout)
    try:
        score_capability(layout, scorers()["length"], "all", make_params(METHODS["length"].scorer.params, {}))
        scoring = "scored on stale features"
    except ValueError as exc:
        scoring = "refused: " + str(exc)[:60]
    try:
        export_subset(layout, current, "alpaca", work / "old.jsonl")
        export = "exported the old version with new texts"
    except ChangedSubsetError as exc:
        export = "refused: " + str(exc)[:60]
    ok = bool(stale) and scoring.startswith("refused") and export.startswith("refused")
    return {"observed": f"stale shards {stale}; scoring {scoring}...; export {export}...", "ok": ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", default="/tmp/nait_faults")
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    shared = Path(os.environ.get("NAIT_DATA_DIR") or ROOT.parent / "shared" / "data")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    scenarios = [
        ("kill -9 during featurization, then run again", "dead run recovered, finished shard reused, rerun completes",
         lambda: kill_during_featurization(work, shared)),
        ("2 concurrent warehouse refreshes with live readers", "no failed rebuild, no failed read",
         lambda: concurrent_refreshes(work, args.readers, args.seconds)),
        ("pool file overwritten in place during ingest", "a consistent snapshot or a refusal, never a mix",
         lambda: overwritten_during_ingest(work, shared)),
        ("pool file rewritten after featurization", "shard reported stale; scoring and old export refuse",
         lambda: rewritten_after_featurization(work)),
    ]
    results = []
    print("| scenario | expected | observed | ok |\n|---|---|---|---|")
    for name, expected, run in scenarios:
        outcome = run()
        results.append({"scenario": name, "expected": expected, **outcome})
        print(f"| {name} | {expected} | {outcome['observed']} | {'yes' if outcome['ok'] else 'NO'} |", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(results, indent=2))
    if not all(r["ok"] for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
