"""Target sets: only non-test splits for selection, seeded sizes, test rows kept apart."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nait_pipeline.lib import targets
from nait_pipeline.lib.settings import CAPABILITIES


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_selection_never_uses_test_rows(shared_data, capability):
    selected = targets.selection_rows(shared_data / "targets", capability, size=64)
    test_ids = {r["example_id"] for r in targets.evaluation_rows(shared_data / "targets", capability).rows}
    assert selected.rows, capability
    assert {r["split"] for r in selected.rows} <= set(targets.SELECTION_SPLITS)
    assert not test_ids & {r["example_id"] for r in selected.rows}
    assert len(selected.rows) == min(64, selected.available)


def test_known_split_sizes(shared_data):
    folder = shared_data / "targets"
    assert targets.selection_rows(folder, "reasoning", size=None).available == 81  # BBH CoT exemplars
    assert targets.selection_rows(folder, "knowledge", size=None).available == 285  # MMLU dev
    assert targets.selection_rows(folder, "multilingual", size=None).available == 9  # TyDiQA one-shot
    assert targets.selection_rows(folder, "math", size=None).available == 7473  # GSM8K train
    assert targets.evaluation_rows(folder, "code").available == 500 + 164  # MBPP test + HumanEval


def test_sample_is_seeded_and_nested(shared_data):
    small = targets.selection_rows(shared_data / "targets", "math", size=16).rows
    large = targets.selection_rows(shared_data / "targets", "math", size=64).rows
    assert small == targets.selection_rows(shared_data / "targets", "math", size=16).rows
    assert {r["example_id"] for r in small} <= {r["example_id"] for r in large}


def test_bad_capability_names_file_and_row(tmp_path):
    table = pa.table({"id": ["a", "b"], "capability": ["math", "poetry"], "task": ["t", "t"],
                      "split": ["dev", "dev"], "prompt": ["p", "p"], "answer": ["a", "a"]})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(targets.TargetFileError, match=r"t\.parquet row 1: capability 'poetry'"):
        targets.selection_rows(tmp_path, "math")


def test_empty_rows_are_reported_not_silently_dropped(tmp_path):
    table = pa.table({"id": ["a", "b"], "capability": ["math", "math"], "task": ["t", "t"],
                      "split": ["dev", "dev"], "prompt": ["p", " "], "answer": ["a", "a"]})
    pq.write_table(table, tmp_path / "t.parquet")
    rows = targets.selection_rows(tmp_path, "math")
    assert [r["example_id"] for r in rows.rows] == ["a"]
    assert rows.skipped == [{"file": "t.parquet", "row_index": 1, "example_id": "b", "reason": "empty prompt"}]
