"""The cpu-mix-2k pool from the shared data: its composition, no row that is a target or test prompt,
the same rows on every build, and a clear error when a group cannot be filled."""

from __future__ import annotations

from collections import Counter

import pytest

from nait_pipeline.lib.data import mixed_pool as mp


def test_the_mixed_pool_is_seeded_deduplicated_and_composed_as_specified(shared_data):
    table, report = mp.build(shared_data / "pools", shared_data / "targets")
    rows = table.to_pylist()
    assert len(rows) == 2000 and len({r["id"] for r in rows}) == 2000
    assert Counter(r["domain"] for r in rows) == {"background": 1500, "math": 125, "code": 125, "reasoning": 125,
                                                  "knowledge": 125}
    assert {r["source"] for r in rows if r["domain"] == "knowledge"} <= {"flan_cot/qasc", "flan_cot/ecqa", "dolly/open_qa",
                                                                        "dolly/closed_qa", "dolly/general_qa"}
    excluded = mp.excluded_prompts(shared_data / "targets", 256)
    assert not any(mp.normalise(r["instruction"]) in excluded for r in rows)
    # flan_cot/gsm8k holds GSM8K train questions, the math in-domain rows: overlaps exist and are dropped.
    assert report["math: flan_cot/gsm8k"]["dropped_overlap"] > 0
    again, _ = mp.build(shared_data / "pools", shared_data / "targets")
    assert again.column("id").to_pylist() == table.column("id").to_pylist()
    other, _ = mp.build(shared_data / "pools", shared_data / "targets", seed=1)
    assert other.column("id").to_pylist() != table.column("id").to_pylist()


def test_a_group_that_cannot_be_filled_is_named(shared_data):
    greedy = (mp.MixGroup("code_alpaca_2k.parquet", ("code_alpaca_2k",), 10_000, "code"),)
    with pytest.raises(mp.MixedPoolError, match="code_alpaca_2k.*10000 asked"):
        mp.build(shared_data / "pools", shared_data / "targets", spec=greedy)
    with pytest.raises(mp.MixedPoolError, match="no rows of"):
        mp.build(shared_data / "pools", shared_data / "targets",
                 spec=(mp.MixGroup("flan_cot.parquet", ("flan_cot/nothing",), 1, "math"),))


def test_the_mixed_protocol_builds_its_pool_in_its_own_input_folder_once(shared_data, tmp_path):
    from nait_pipeline.lib.evaluation import protocol as proto

    chosen = proto.get_protocol("cpu-mix-2k")
    inputs = proto.prepare_inputs(chosen, shared_data, tmp_path / "input")
    pool = inputs / "pools" / chosen.pool_file
    assert pool.is_symlink() and pool.resolve() == (tmp_path / "input" / "mixed" / chosen.pool_file).resolve()
    built = pool.resolve().stat().st_mtime_ns
    proto.prepare_inputs(chosen, shared_data, tmp_path / "input")
    assert pool.resolve().stat().st_mtime_ns == built  # kept: the ingest sees the same file
    assert not (shared_data / "pools" / chosen.pool_file).exists()  # nothing written into the shared data
