"""Pool ingestion on real files: formats, bad rows, duplicates, sampling, shards, accounting."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nait_pipeline.lib.data import ingest


def write_jsonl(path: Path, lines: list[bytes | str | dict]) -> Path:
    with open(path, "wb") as handle:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            handle.write(line if isinstance(line, bytes) else line.encode())
            handle.write(b"\n")
    return path


def row(instruction="Add 2 and 3.", input_text="", output="5", **extra) -> dict:
    return {"instruction": instruction, "input": input_text, "output": output, **extra}


def test_jsonl_bad_rows_are_quarantined_with_row_and_reason(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        row(),                                   # 0 kept
        row(output=""),                          # 1 empty output
        row(instruction=7),                      # 2 non-string
        b'{"instruction": "x", "output": "\xff\xfe"}',  # 3 not UTF-8
        '{"instruction": "broken"',              # 4 invalid JSON
        "[1, 2]",                                # 5 not an object
        {"instruction": "No output"},            # 6 missing field
        row(instruction="   "),                  # 7 whitespace only
        row(output="y" * 50),                    # 8 too long
        row(instruction="Other", input_text=None),  # 9 kept: null input is an empty input
    ])
    result = ingest.ingest_pools([path], max_chars=40)
    reasons = {q["row_index"]: q["reason"] for q in result.quarantine_rows}
    assert reasons == {
        1: "output: empty",
        2: "instruction: not a string (int)",
        3: "line is not valid UTF-8",
        4: reasons[4],
        5: "line is not a JSON object",
        6: "output: missing",
        7: "instruction: empty",
        8: "output: longer than 40 characters (50)",
    }
    assert reasons[4].startswith("invalid JSON")
    assert [r["example_id"] for r in result.pool_rows] == ["mine-000000", "mine-000009"]
    assert result.pool_rows[1]["input"] == ""
    assert all(q["file"] == "mine.jsonl" for q in result.quarantine_rows)
    counts = result.counts()
    assert counts["read"] == 10 == counts["kept"] + counts["quarantined"]


def test_duplicates_within_and_across_pools_are_flagged_not_dropped(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [row(), row(instruction="B"), row(output="five")])
    pq.write_table(pa.Table.from_pylist([row(instruction="B", output="other"), row(instruction="C")]),
                   tmp_path / "b.parquet")
    result = ingest.ingest_pools(ingest.discover_pool_files(tmp_path))
    status = {r["example_id"]: (r["status"], r["duplicate_of"]) for r in result.pool_rows}
    assert status == {
        "a-000000": ("kept", None),
        "a-000001": ("kept", None),
        "a-000002": ("duplicate", "a-000000"),  # same (instruction, input), other output
        "b-000000": ("duplicate", "a-000001"),
        "b-000001": ("kept", None),
    }
    assert a.name in result.rows_read


def test_given_ids_are_kept_and_reused_ids_quarantined(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [row(id="x1"), row(instruction="Q", id="x1"), row(instruction="R", id="")])
    result = ingest.ingest_pools([path])
    assert [r["example_id"] for r in result.pool_rows] == ["x1", "p-000002"]
    assert result.quarantine_rows[0]["reason"] == "id: 'x1' already used by an earlier row"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.parquet", b"not parquet at all", "not a readable Parquet file"),
        ("nocol.jsonl", b'{"instruction": "a", "response": "b"}\n', "missing required column(s) ['output']"),
        ("garbage.jsonl", b"\x00\x01\n{{{\n", "no line is a valid JSON object"),
        ("list.json", b'{"instruction": "a"}', "must hold a list of records"),
    ],
)
def test_unusable_files_raise_an_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ingest.PoolFileError) as info:
        ingest.ingest_pools([path])
    assert str(path) in str(info.value) and message in str(info.value)


def test_parquet_without_required_column_names_it(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"instruction": ["a"], "answer": ["b"]}), path)
    with pytest.raises(ingest.PoolFileError, match=r"missing required column\(s\) \['output'\]"):
        ingest.ingest_pools([path])


def test_sampling_is_seeded_stable_and_accounted(tmp_path):
    rows = [row(instruction=f"Q{i}") for i in range(50)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    first = ingest.ingest_pools([path], sample=10, shard_size=4)
    again = ingest.ingest_pools([path], sample=10, shard_size=4)
    kept = [r["example_id"] for r in first.pool_rows if r["status"] == "kept"]
    assert kept == [r["example_id"] for r in again.pool_rows if r["status"] == "kept"]
    assert len(kept) == 10 and first.counts()["sampled_out"] == 40
    assert first.pool_version() == again.pool_version()
    # Appending rows keeps the sampled rows that still rank in the sample, and shard keys are per pool.
    grown = write_jsonl(tmp_path / "p.jsonl", rows + [row(instruction=f"New{i}") for i in range(5)])
    bigger = ingest.ingest_pools([grown], sample=10, shard_size=4)
    kept_after = {r["example_id"] for r in bigger.pool_rows if r["status"] == "kept"}
    assert len(kept_after) == 10 and len(kept_after & set(kept)) >= 5
    assert sorted({r["shard"] for r in first.pool_rows if r["shard"]}) == ["p-0000", "p-0001", "p-0002"]


def test_shards_follow_file_order_so_appended_rows_only_add_shards(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [row(instruction=f"Q{i}") for i in range(8)])
    before = {r["example_id"]: r["shard"] for r in ingest.ingest_pools([path], shard_size=4).pool_rows}
    write_jsonl(path, [row(instruction=f"Q{i}") for i in range(12)])
    after = {r["example_id"]: r["shard"] for r in ingest.ingest_pools([path], shard_size=4).pool_rows}
    assert all(after[k] == v for k, v in before.items())
    assert set(after.values()) - set(before.values()) == {"p-0002"}


def test_shared_pools_accounting_and_known_quarantine(shared_data):
    files = ingest.discover_pool_files(shared_data / "pools")
    result = ingest.ingest_pools(files)
    total = sum(pq.read_metadata(f).num_rows for f in files)
    counts = result.counts()
    assert counts["read"] == total == 90_397
    assert counts["kept"] + counts["duplicate"] + counts["quarantined"] == total
    quarantined = {q["example_id"]: q["reason"] for q in result.quarantine_rows}
    assert quarantined == {"code_alpaca_2k-000237": "output: empty", "code_alpaca_2k-001859": "output: empty"}
    # README: dolly 15 duplicate pairs + 3 shared with alpaca; code_alpaca 1 with alpaca; flan_cot 1.
    by_pool: dict[str, int] = {}
    for r in result.pool_rows:
        if r["status"] == "duplicate":
            by_pool[r["pool"]] = by_pool.get(r["pool"], 0) + 1
    assert by_pool == {"code_alpaca_2k": 1, "dolly_alpagasus_3k": 18, "flan_cot": 1}


def test_jsonl_edge_cases_bom_blank_lines_and_raw_of_bad_lines(tmp_path):
    path = tmp_path / "edge.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(row()).encode() + b"\n\n\n" +
                     b'{"instruction": "broken"\n' + json.dumps(row(instruction="Later")).encode() + b"\n")
    result = ingest.ingest_pools([path])
    # The byte-order mark does not cost the first line; row indexes are the file's real lines (0-based).
    assert [(r["example_id"], r["row_index"]) for r in result.pool_rows] == [("edge-000000", 0), ("edge-000004", 4)]
    (bad,) = result.quarantine_rows
    assert bad["row_index"] == 3 and bad["raw"] == '{"instruction": "broken"' and bad["example_id"] == "edge-000003"


def test_a_file_rewritten_while_it_is_read_is_refused(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "busy.jsonl", [row()])
    real_read = Path.read_bytes

    def read_then_rewrite(self):
        data = real_read(self)
        write_jsonl(self, [row(), row(instruction="appended by a writer")])  # a copy in progress
        return data

    monkeypatch.setattr(Path, "read_bytes", read_then_rewrite)
    with pytest.raises(ingest.PoolFileError, match="busy.jsonl: the file changed while it was being read"):
        ingest.read_snapshot(path, pause_s=0.0)


def test_a_file_that_settles_is_read_whole(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "settling.jsonl", [row()])
    real_read = Path.read_bytes
    calls = []

    def rewrite_once(self):
        data = real_read(self)
        if not calls:
            write_jsonl(self, [row(), row(instruction="second")])
        calls.append(1)
        return data

    monkeypatch.setattr(Path, "read_bytes", rewrite_once)
    data = ingest.read_snapshot(path, pause_s=0.0)
    assert len(calls) == 2 and data.count(b"\n") == 2


def test_unsupported_files_in_the_pools_folder_are_named(tmp_path):
    write_jsonl(tmp_path / "ok.jsonl", [row()])
    (tmp_path / "rows.csv").write_text("instruction,output\nx,y\n")
    (tmp_path / ".hidden").write_text("")
    assert ingest.unsupported_pool_files(tmp_path) == ["rows.csv"]


def test_a_file_written_moments_ago_is_waited_for(tmp_path):
    import time

    path = write_jsonl(tmp_path / "fresh.jsonl", [row()])
    started = time.perf_counter()
    assert ingest.read_snapshot(path, settle_s=0.5) == path.read_bytes()
    assert time.perf_counter() - started >= 0.45  # it waited for the file to be 0.5 s quiet


def test_file_changes_since_the_last_ingest(tmp_path):
    previous = tmp_path / "files.parquet"
    pq.write_table(pa.table({"file": ["a.jsonl", "b.jsonl", "c.jsonl"], "rows_read": [1, 1, 1],
                             "sha256": ["ha", "hb", "hc"]}), previous)
    changes = ingest.file_changes(previous, {"a.jsonl": "ha", "b.jsonl": "hb2", "d.jsonl": "hd"})
    assert changes == {"added": ["d.jsonl"], "removed": ["c.jsonl"], "rewritten": ["b.jsonl"]}
    assert ingest.file_changes(tmp_path / "none.parquet", {"a.jsonl": "ha"})["added"] == ["a.jsonl"]


def test_a_dangling_pool_link_fails_the_ingest_naming_it(tmp_path):
    write_jsonl(tmp_path / "ok.jsonl", [row()])
    (tmp_path / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    with pytest.raises(ingest.PoolFileError, match=r"\['gone.jsonl'\].*not readable files"):
        ingest.discover_pool_files(tmp_path)
