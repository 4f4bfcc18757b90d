"""The whole comparison protocol through the command line, on the `smoke` protocol (a few minutes)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from nait_pipeline import cli
from nait_pipeline.lib.io import sql
from nait_pipeline.lib.io.layout import LakeLayout


@pytest.mark.slow
def test_smoke_protocol_runs_end_to_end_and_resumes(shared_data, model_dir, tmp_path, monkeypatch, capsys):
    for name in ("NAIT_DATA_DIR", "NAIT_STORE_DIR", "NAIT_POOL_SAMPLE", "DAGSTER_HOME"):
        monkeypatch.setenv(name, "")  # restored after the test: the command sets them for its own store
    monkeypatch.setenv("NAIT_DATA_DIR", str(shared_data))
    monkeypatch.setenv("NAIT_MODEL", str(model_dir))
    store = tmp_path / "smoke"
    cli.main(["protocol", "smoke", "--store", str(store)])
    layout = LakeLayout(store / "lake")
    table = pq.read_table(layout.comparison("smoke")).to_pylist()
    # One model per method (its all-capability subset), evaluated on every capability.
    assert {r["method"] for r in table} == {"nait:all", "less:all", "bids:all", "g2is:all", "length", "lp_low",
                                            "random", "full", "base"}
    assert {r["eval_capability"] for r in table if r["method"] == "g2is:all"} >= {"math", "code", "knowledge"}
    assert all(r["runs"] == 3 for r in table if r["method"] == "random")
    assert all(r["runs"] == 2 for r in table if r["method"] == "length")  # two training orders
    intervals = pq.read_table(layout.comparison_intervals("smoke")).to_pylist()
    length_vs_random = [r for r in intervals if r["method"] == "length" and r["reference"] == "random"]
    assert length_vs_random and all(r["lower"] is not None for r in length_vs_random)  # 2 runs vs 3: an interval
    assert any(r["reference"] == "base" for r in intervals)
    rows = sql.run_query(store / "warehouse.duckdb", "protocol_comparison", {"protocol": "smoke"}).to_pylist()
    assert len(rows) == len(table)

    capsys.readouterr()
    cli.main(["protocol", "smoke", "--store", str(store)])  # everything trained and evaluated is kept
    out = capsys.readouterr().out
    assert out.count("fine-tuned model with these parameters exists, kept") == 11  # + length@order1
    assert out.count("evaluation with these parameters exists, kept") == 12  # + the base model
