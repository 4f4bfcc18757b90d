"""The pool view: one reader of the current pool table, cached per file and never stale."""

from __future__ import annotations

import pyarrow as pa
import pytest

from nait_pipeline.lib.io.pool_view import shard_input_version
from nait_pipeline.lib.io.contract import POOL_SCHEMA
from nait_pipeline.lib.io.lake import write_parquet
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.pool_view import PoolMissingError, PoolView


def _pool(layout: LakeLayout, version: str, rows: list[tuple[str, str, str, str]]) -> None:
    """rows: (example_id, shard, status, content_hash)."""
    table = pa.Table.from_pylist([
        dict(example_id=i, pool="p", source=f"src-{shard}", file="p.jsonl", row_index=n, instruction=f"q {i}",
             input="", output="a" * (n + 1), content_hash=h, status=status, duplicate_of=None, shard=shard)
        for n, (i, shard, status, h) in enumerate(rows)], schema=POOL_SCHEMA)
    write_parquet(table, layout.pool_examples, {"pool_version": version})


ROWS = [("b", "s0", "kept", "hb"), ("a", "s0", "kept", "ha"), ("c", "s1", "kept", "hc"), ("d", "s1", "duplicate", "hd")]


def test_kept_rows_shards_and_versions(tmp_path):
    layout = LakeLayout(tmp_path)
    _pool(layout, "v1", ROWS)
    pool = PoolView.open(layout)
    assert pool.version == "v1"
    assert pool.ids == ["a", "b", "c"]  # sorted, the duplicate left out
    assert pool.shards == ["s0", "s1"]
    assert pool.content_hashes == {"b": "hb", "a": "ha", "c": "hc"}
    # Table order within a shard, as the featurizer reads it.
    assert pool.shard_versions == {"s0": shard_input_version(["b", "a"], ["hb", "ha"]),
                                   "s1": shard_input_version(["c"], ["hc"])}
    assert pool.kept(["example_id"], shard="s0").column("example_id").to_pylist() == ["b", "a"]
    assert pool.aligned(["c", "a"], "source") == ["src-s1", "src-s0"]
    assert pool.aligned(["c", "a"], "output") == ["aaa", "aa"]
    assert [r["instruction"] for r in pool.rows(["c", "b"])] == ["q c", "q b"]
    assert pool.instructions(["a", "gone"]) == ["q a", ""]


def test_ids_the_pool_does_not_keep_are_named(tmp_path):
    layout = LakeLayout(tmp_path)
    _pool(layout, "v1", ROWS)
    pool = PoolView.open(layout)
    with pytest.raises(KeyError, match=r"1 id\(s\) are not kept rows of pool version v1, e.g. \['d'\]"):
        pool.aligned(["a", "d"], "source")
    with pytest.raises(KeyError, match=r"\['zz'\]"):
        pool.rows(["zz"])


def test_one_view_per_file_and_a_new_one_after_reingest(tmp_path):
    layout = LakeLayout(tmp_path)
    _pool(layout, "v1", ROWS)
    first = PoolView.open(layout)
    assert PoolView.open(layout) is first  # the stages of one process share its reads
    _pool(layout, "v2", ROWS[:2])  # an atomic rewrite, as it_pool does
    second = PoolView.open(layout)
    assert second is not first and second.version == "v2" and second.shards == ["s0"]


def test_stale_shards_are_missing_or_of_other_texts(tmp_path):
    layout = LakeLayout(tmp_path)
    _pool(layout, "v1", ROWS)
    pool = PoolView.open(layout)
    write_parquet(pa.table({"example_id": ["b", "a"]}), layout.pool_activations("s0"),
                  {"input_version": pool.shard_versions["s0"]})
    assert pool.stale_shards(layout.pool_activations) == ["s1"]
    write_parquet(pa.table({"example_id": ["b", "a"]}), layout.pool_activations("s0"), {"input_version": "older"})
    assert pool.stale_shards(layout.pool_activations) == ["s0", "s1"]


def test_a_lake_without_a_pool_says_what_to_materialize(tmp_path):
    with pytest.raises(PoolMissingError, match="materialize it_pool first"):
        PoolView.open(LakeLayout(tmp_path))
