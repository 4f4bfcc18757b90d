"""The warehouse: views from sql/, read-only access, parameters, atomic rebuilds."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from nait_pipeline.lib.data.ingest import POOL_SCHEMA, QUARANTINE_SCHEMA
from nait_pipeline.lib.io import sql
from nait_pipeline.lib.io.contract import ensure_contract_tables
from nait_pipeline.lib.io.lake import write_parquet
from nait_pipeline.lib.io.layout import LakeLayout


def small_lake(root):
    layout = LakeLayout(root)
    rows = [dict(example_id=f"p-{i}", pool="p", source="p", file="p.jsonl", row_index=i, instruction=f"Q{i}",
                 input="", output="A", content_hash=str(i), status="kept" if i < 3 else "duplicate",
                 duplicate_of=None if i < 3 else "p-0", shard="p-0000" if i < 3 else None) for i in range(4)]
    write_parquet(pa.Table.from_pylist(rows, schema=POOL_SCHEMA), layout.pool_examples)
    quarantine = [dict(pool="p", file="p.jsonl", row_index=4, example_id="p-4", field="output",
                       reason="output: empty", raw="{}")]
    write_parquet(pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA), layout.pool_quarantine)
    write_parquet(pa.table({"file": ["p.jsonl"], "rows_read": [5]}), layout.pool_files)
    ensure_contract_tables(root)
    return layout


def test_views_answer_the_contract_and_queries_run_read_only(tmp_path):
    lake = tmp_path / "it's lake"  # a quote in the path must not break the view SQL
    small_lake(lake)
    db = tmp_path / "warehouse.duckdb"
    views = sql.build_warehouse(db, lake)
    assert {"pool_examples", "pool_quarantine", "target_examples", "scores", "subsets", "subset_lineage"} <= set(views)
    with sql.connect_read_only(db) as con:
        assert con.execute("SELECT count(*) FROM pool_examples").fetchone()[0] == 3
        assert con.execute("SELECT count(*) FROM scores").fetchone()[0] == 0
        assert con.execute("SELECT reason FROM pool_quarantine WHERE example_id = ?", ["p-4"]).fetchone() == (
            "output: empty",)
        with pytest.raises(duckdb.Error):
            con.execute("CREATE TABLE x (a INT)")
    accounting = sql.run_query(db, "pool_accounting").to_pylist()
    assert accounting == [dict(file="p.jsonl", rows_read=5, kept=3, duplicates=1, sampled_out=0, quarantined=1,
                               balanced=True)]
    for name in sql.query_names():
        sql.run_query(db, name, sql.QUERY_EXAMPLE_PARAMS.get(name))


def test_rebuild_while_an_analyst_is_connected(tmp_path):
    small_lake(tmp_path / "lake")
    db = tmp_path / "warehouse.duckdb"
    sql.build_warehouse(db, tmp_path / "lake")
    with sql.connect_read_only(db) as analyst:
        sql.build_warehouse(db, tmp_path / "lake")  # does not wait on the analyst's connection
        assert analyst.execute("SELECT count(*) FROM pool_examples").fetchone()[0] == 3
    assert not list(tmp_path.glob(".warehouse.duckdb.*"))


def test_unknown_query_name_is_a_clear_error():
    with pytest.raises(KeyError, match="no query named 'nope'"):
        sql.load_query("nope")


def test_a_stale_write_ahead_log_does_not_break_the_rebuild(tmp_path):
    """A read-write session killed before its checkpoint leaves warehouse.duckdb.wal behind; replayed
    onto the rebuilt file, its DROP VIEW would take a contract view away from every reader."""
    import subprocess
    import sys

    lake = tmp_path / "lake"
    small_lake(lake)
    db = tmp_path / "warehouse.duckdb"
    sql.build_warehouse(db, lake)
    script = ("import duckdb, os; con = duckdb.connect(r'%s'); con.execute(\"SET checkpoint_threshold='1GB'\"); "
              "con.execute('DROP VIEW subsets'); con.execute('CREATE TABLE scratch AS SELECT range AS x FROM range(1000)'); os._exit(9)") % db
    subprocess.run([sys.executable, "-c", script], check=False)
    assert (tmp_path / "warehouse.duckdb.wal").exists()
    sql.build_warehouse(db, lake)
    sql.build_warehouse(db, lake)
    with sql.connect_read_only(db) as con:
        assert con.execute("SELECT count(*) FROM subsets").fetchone()[0] == 0


def test_subset_diff_query_lists_added_removed_and_moved_rows(tmp_path):
    from nait_pipeline.lib.io.contract import SUBSETS_SCHEMA

    layout = small_lake(tmp_path / "lake")
    rows = [("old", 1, "p-0", "0"), ("old", 2, "p-1", "1"), ("new", 1, "p-1", "1b"), ("new", 2, "p-2", "2")]
    write_parquet(pa.Table.from_pylist([dict(subset_version=v, method="m", capability="all", budget_ratio=0.1, rank=r,
                                             example_id=i, score=None, content_hash=h) for v, r, i, h in rows],
                                       schema=SUBSETS_SCHEMA), layout.subset("both"))
    db = tmp_path / "warehouse.duckdb"
    sql.build_warehouse(db, layout.root)
    got = sql.run_query(db, "subset_diff", {"old_version": "old", "new_version": "new"}).to_pylist()
    summary = {(r["example_id"], r["change"], r["rank_change"], r["text_changed"]) for r in got}
    assert summary == {("p-2", "added", None, False), ("p-0", "removed", None, False), ("p-1", "kept", 1, True)}


def test_two_refreshes_started_together_leave_a_whole_warehouse(tmp_path):
    """Two warehouse rebuilds at once (two runs, or a run and the nightly refresh) while a reader
    queries: every rebuild succeeds, every read succeeds, and the file left is a complete warehouse."""
    import threading

    lake = small_lake(tmp_path / "lake")
    db = tmp_path / "warehouse.duckdb"
    sql.build_warehouse(db, lake.root)
    errors: list[str] = []
    reads = [0]
    done = threading.Event()

    def rebuild():
        for _ in range(15):
            try:
                sql.build_warehouse(db, lake.root)
            except Exception as exc:  # collected: any failure is what the test looks for
                errors.append(f"rebuild: {exc}")

    def read():
        while not done.is_set():
            try:
                with sql.connect_read_only(db) as con:
                    assert con.execute("SELECT count(*) FROM pool_examples").fetchone()[0] == 3
                reads[0] += 1
            except Exception as exc:  # collected, as above
                errors.append(f"read: {exc}")

    reader = threading.Thread(target=read)
    reader.start()
    builders = [threading.Thread(target=rebuild) for _ in range(2)]
    for thread in builders:
        thread.start()
    for thread in builders:
        thread.join()
    done.set()
    reader.join()
    assert errors == [] and reads[0] > 0
    with sql.connect_read_only(db) as con:
        assert {"pool_examples", "subsets", "current_subsets"} <= {
            r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert not list(tmp_path.glob(".warehouse.duckdb.*"))  # no temporary file left behind
