"""Target sets: only non-test splits for selection, seeded sizes, test rows kept apart."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nait_pipeline.lib.data import targets
from nait_pipeline.lib.io.settings import CAPABILITIES


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
    table = pa.table({"id": ["a", "b"], "capability": ["math", "Poetry!"], "task": ["t", "t"],
                      "split": ["dev", "dev"], "prompt": ["p", "p"], "answer": ["a", "a"]})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(targets.TargetFileError, match=r"t\.parquet row 1: capability 'Poetry!' is not a valid"):
        targets.selection_rows(tmp_path, "math")


def test_a_dropped_file_is_a_capability(shared_data, tmp_path):
    folder = tmp_path / "targets"
    folder.mkdir()
    for path in (shared_data / "targets").iterdir():
        (folder / path.name).symlink_to(path)
    rows = [{"instruction": "Is this clause void?", "input": "Clause 4", "output": "Yes.", "split": "dev"},
            {"prompt": "Define tort.", "answer": "A civil wrong."},
            {"prompt": "Define lien.", "answer": "A right to keep property.", "split": "test"},
            {"prompt": "  ", "answer": "empty prompt"}]
    (folder / "legal.jsonl").write_text("\ufeff" + "\n".join(json.dumps(r) for r in rows) + "\n")
    assert targets.discover_capabilities(folder) == [*CAPABILITIES, "legal"]
    selected = targets.selection_rows(folder, "legal")
    assert [r["prompt"] for r in selected.rows] == ["Is this clause void?\n\nClause 4", "Define tort."]
    assert selected.skipped == [{"file": "legal.jsonl", "row_index": 3, "example_id": "legal-000003",
                                 "reason": "empty prompt"}]
    held_out = targets.evaluation_rows(folder, "legal").rows
    assert [r["answer"] for r in held_out] == ["A right to keep property."]
    (folder / "legal.test.jsonl").write_text(json.dumps({"id": "t1", "prompt": "Define tort.", "answer": "x"}) + "\n")
    assert {r["example_id"] for r in targets.evaluation_rows(folder, "legal").rows} == {"legal-000002", "t1"}


@pytest.mark.parametrize("files, message", [
    ({"math.jsonl": [{"prompt": "p", "answer": "a"}]}, "math.jsonl defines capability 'math', which gsm8k.parquet"),
    ({"legal.jsonl": [{"prompt": "p", "answer": "a"}], "legal.parquet": None}, "both define capability 'legal'"),
    ({"legal.test.jsonl": [{"prompt": "p", "answer": "a"}]}, "no in-domain file"),
    ({"Legal Cases.jsonl": [{"prompt": "p", "answer": "a"}]}, "not a valid capability name"),
])
def test_clashing_or_badly_named_capability_files_are_refused_by_name(shared_data, tmp_path, files, message):
    folder = tmp_path / "targets"
    folder.mkdir()
    (folder / "gsm8k.parquet").symlink_to(shared_data / "targets" / "gsm8k.parquet")
    for name, rows in files.items():
        if rows is None:
            pq.write_table(pa.table({"prompt": ["p"], "answer": ["a"]}), folder / name)
        else:
            (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(targets.TargetFileError, match=message):
        targets.discover_capabilities(folder)


def test_a_user_file_with_no_rows_or_a_reused_id_is_refused(tmp_path):
    (tmp_path / "legal.jsonl").write_text("\n")
    with pytest.raises(targets.TargetFileError, match="legal.jsonl: the file has no rows"):
        targets.selection_rows(tmp_path, "legal")
    (tmp_path / "legal.jsonl").write_text(json.dumps({"id": "a", "prompt": "p", "answer": "x"}) + "\n" +
                                          json.dumps({"id": "a", "prompt": "q", "answer": "y"}) + "\n")
    with pytest.raises(targets.TargetFileError, match="legal.jsonl row 1: id 'a' is already used by legal.jsonl row 0"):
        targets.selection_rows(tmp_path, "legal")


def test_empty_rows_are_reported_not_silently_dropped(tmp_path):
    table = pa.table({"id": ["a", "b"], "capability": ["math", "math"], "task": ["t", "t"],
                      "split": ["dev", "dev"], "prompt": ["p", " "], "answer": ["a", "a"]})
    pq.write_table(table, tmp_path / "t.parquet")
    rows = targets.selection_rows(tmp_path, "math")
    assert [r["example_id"] for r in rows.rows] == ["a"]
    assert rows.skipped == [{"file": "t.parquet", "row_index": 1, "example_id": "b", "reason": "empty prompt"}]
