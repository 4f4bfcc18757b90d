"""`nait-pipeline vacuum`: objects no manifest names go after two vacuums a grace apart (on moto's S3 API),
objects named again are kept, a dry run changes nothing; locally, killed writers' temporary files go once
untouched for the grace."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

from nait_pipeline.lib.io.lake import read_table, write_parquet
from nait_pipeline.lib.io.settings import Settings
from nait_pipeline.lib.io.storage import OBJECTS
from nait_pipeline.lib.io.vacuum import vacuum_local, vacuum_object_store

HOUR = 3600.0


def s3_layout(store: str, endpoint: str, local: Path):
    return Settings(data_dir=local, store_dir=store, model=None, pool_sample=None, endpoint_url=endpoint,
                    local_dir=local).layout


def objects(fs) -> set[str]:
    fs.s3.invalidate_cache(fs.root)
    return set(fs.s3.find(f"{fs.root}/{OBJECTS}"))


def test_replaced_and_unpublished_objects_go_after_two_vacuums_a_grace_apart(s3_store, s3_endpoint, tmp_path):
    layout = s3_layout(s3_store, s3_endpoint, tmp_path)
    fs = layout.root.fs
    math, code = layout.scores("nait", "math"), layout.scores("nait", "code")
    write_parquet(pa.table({"v": [1]}), math)
    first = fs.object_key(math.path)
    write_parquet(pa.table({"v": [2]}), math)  # replaces: the first object is no longer named
    write_parquet(pa.table({"v": [3]}), code)
    unpublished = fs.object_key(code.path)
    code.unlink()  # unpublished: its object stays
    live = fs.object_key(math.path)
    assert objects(fs) == {first, live, unpublished}

    now = time.time()
    dry = vacuum_object_store(fs, HOUR, dry_run=True, now=now)
    assert (dry.deleted, dry.marked, dry.referenced) == ([], 2, 1)
    assert not fs.s3.exists(f"{fs.root}/_vacuum/marks.json")  # a dry run writes no marks either
    marked = vacuum_object_store(fs, HOUR, now=now)
    assert (marked.deleted, marked.marked) == ([], 2) and objects(fs) == {first, live, unpublished}
    early = vacuum_object_store(fs, HOUR, now=now + HOUR - 1)  # within the grace: still kept
    assert early.deleted == [] and objects(fs) == {first, live, unpublished}
    swept = vacuum_object_store(fs, HOUR, now=now + HOUR)
    assert sorted(swept.deleted) == sorted([first, unpublished]) and swept.deleted_bytes > 0
    assert objects(fs) == {live}
    assert read_table(math).column("v").to_pylist() == [2]  # the published file reads as before
    assert vacuum_object_store(fs, HOUR, now=now + 2 * HOUR).deleted == []


def test_an_object_named_again_is_unmarked_and_kept(s3_store, s3_endpoint, tmp_path):
    layout = s3_layout(s3_store, s3_endpoint, tmp_path)
    fs = layout.root.fs
    path = layout.scores("rds", "math")
    write_parquet(pa.table({"v": [1]}), path)
    first = fs.object_key(path)
    write_parquet(pa.table({"v": [2]}), path)
    now = time.time()
    assert vacuum_object_store(fs, HOUR, now=now).marked == 1  # the first object, unreferenced
    write_parquet(pa.table({"v": [1]}), path)  # the same bytes again: the same object, named again
    assert fs.object_key(path) == first
    later = vacuum_object_store(fs, HOUR, now=now + 2 * HOUR)
    assert first not in later.deleted and fs.s3.exists(first)
    assert read_table(path).column("v").to_pylist() == [1]


def test_local_leftovers_of_killed_writers_go_once_untouched_for_the_grace(tmp_path):
    lake = tmp_path / "store" / "lake"
    write_parquet(pa.table({"v": [1]}), lake / "scores" / "nait__math.parquet")
    stale = lake / "scores" / ".nait__code.parquet.abc.parquet.tmp"
    stale.write_bytes(b"half a file")
    fresh = lake / "scores" / ".nait__knowledge.parquet.def.parquet.tmp"
    fresh.write_bytes(b"being written")
    stale_dir = tmp_path / "store" / "models" / ".run.xyz.tmp"
    (stale_dir / "checkpoint").mkdir(parents=True)
    (stale_dir / "checkpoint" / "weights.bin").write_bytes(b"w" * 10)
    old = time.time() - 2 * HOUR
    for path in (stale, stale_dir, stale_dir / "checkpoint", stale_dir / "checkpoint" / "weights.bin"):
        os.utime(path, (old, old))
    dry = vacuum_local(tmp_path / "store", HOUR, dry_run=True)
    assert sorted(dry.deleted) == sorted([str(stale), str(stale_dir)]) and stale.exists()
    report = vacuum_local(tmp_path / "store", HOUR)
    assert report.marked == 1 and report.deleted_bytes == len(b"half a file") + 10
    assert not stale.exists() and not stale_dir.exists() and fresh.exists()
    assert (lake / "scores" / "nait__math.parquet").exists()


def test_the_cli_vacuums_an_s3_store(s3_store, s3_endpoint, tmp_path):
    layout = s3_layout(s3_store, s3_endpoint, tmp_path)
    path = layout.scores("nait", "math")
    write_parquet(pa.table({"v": [1]}), path)
    write_parquet(pa.table({"v": [2]}), path)
    env = {**os.environ, "NAIT_STORE_DIR": s3_store, "NAIT_S3_ENDPOINT": s3_endpoint, "NAIT_LOCAL_DIR": str(tmp_path),
           "NAIT_SETTINGS": str(tmp_path / "none.toml")}
    cli = str(Path(sys.executable).parent / "nait-pipeline")
    for _ in range(2):  # grace 0: the second run deletes what the first marked
        done = subprocess.run([cli, "vacuum", "--grace-hours", "0"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
    assert "deleted 1 (" in done.stdout and f"s3://{s3_store[5:]}/lake" in done.stdout
    assert read_table(path).column("v").to_pylist() == [2]
    refused = subprocess.run([cli, "vacuum", "--grace-hours", "-1"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "--grace-hours must be >= 0" in refused.stderr
