"""Atomic writes: all or nothing, and files readable like any other file the user writes."""

from __future__ import annotations

import os
import stat

import pyarrow as pa
import pytest

from nait_pipeline.lib.io import lake
from nait_pipeline.lib.io.lake import atomic_dir, read_metadata, write_parquet


def test_written_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_parquet(pa.table({"a": [1]}), tmp_path / "t.parquet", {"version": "v1"})
        with atomic_dir(tmp_path / "model") as folder:
            (folder / "weights").write_text("w")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    assert read_metadata(path) == {"version": "v1"}


def test_a_failed_write_leaves_the_previous_file_and_no_temp_files(tmp_path, monkeypatch):
    path = write_parquet(pa.table({"a": [1]}), tmp_path / "t.parquet")
    before = path.read_bytes()

    def dies_half_way(table, where, **_kwargs):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(lake.pq, "write_table", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(pa.table({"a": [2]}), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
