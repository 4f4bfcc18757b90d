"""Near-duplicates: MinHash LSH and embedding cosine on hand-made rows, and the runner's cap."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nait_pipeline.lib.io.contract import NEAR_DUPLICATES_SCHEMA
from nait_pipeline.lib.io.lake import read_metadata, write_parquet
from nait_pipeline.lib.methods import METHODS
from nait_pipeline.lib.methods.base import SelectionOptions, make_params
from nait_pipeline.lib.methods.run import run_selection
from nait_pipeline.lib.selection import near_duplicates as nd
from nait_pipeline_tests import synthetic_lake

TEXTS = [
    "Write a short poem about the sea at night, with waves and the moon and a lonely boat drifting home.",
    "Write a short poem about the sea at night, with waves and the moon and a lonely boat drifting home!",
    "Write a short poem about the sea at night, with waves and the moon and a small boat drifting home.",
    "Explain how a binary search works on a sorted list of numbers and why it needs the list sorted.",
    "Hi",
    "hi!",
    "",
]


def test_minhash_finds_reworded_texts_and_only_them():
    signatures, valid = nd.minhash(pa.array(TEXTS))
    assert valid.tolist() == [True] * 6 + [False]  # an empty text has no signature
    similarity = lambda a, b: np.mean(signatures[a] == signatures[b])  # noqa: E731
    assert similarity(0, 1) == 1.0  # the same words (punctuation is not a word)
    assert 0.4 < similarity(0, 2) < 0.8  # one word changed: 12 of 16 shingles shared, Jaccard 12/20
    assert similarity(0, 3) < 0.1
    assert similarity(4, 5) == 1.0  # shorter than a shingle: one shingle of all its words
    pairs = set(nd.lsh_pairs(signatures, valid, jaccard=0.5))
    assert pairs == {(0, 1), (0, 2), (4, 5)}
    assert set(nd.lsh_pairs(signatures, valid, jaccard=0.9)) == {(0, 1), (4, 5)}


def test_embedding_pairs_are_by_centred_cosine():
    # Every row shares a large common direction (as a language model's mean states do); centring removes it.
    common = np.array([10.0, 10.0, 0.0, 0.0])
    vectors = np.array([[1, 0, 0, 0], [1, 0.05, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) + common
    assert set(nd.embedding_pairs([vectors[:2], vectors[2:]], cosine=0.95, block_rows=2)) == {(0, 1)}


def test_clusters_join_kinds_into_groups_and_the_cap_keeps_the_first():
    ids = ["a", "b", "c", "d", "e"]
    table = nd.clusters(ids, {"instruction": [(0, 1)], "response": [(1, 2)], "embedding": []})
    rows = {(r["example_id"], r["kind"]): r for r in table.to_pylist()}
    assert rows[("a", "instruction")]["cluster"] == "instruction:a" and rows[("c", "response")]["cluster"] == "response:b"
    assert {r["group"] for r in rows.values()} == {"group:a"}  # a-b by instruction, b-c by response: one group
    groups = {r["example_id"]: r["group"] for r in table.to_pylist()}
    assert nd.capped(ids, groups, 1) == {"b", "c"} and nd.capped(ids, groups, 2) == {"c"}
    assert nd.duplicate_share(["a", "c", "d"], groups) == pytest.approx(2 / 3)
    assert nd.duplicate_share(["a", "d", "e"], groups) == 0.0


def _groups(layout, members: list[list[str]]) -> None:
    rows = [dict(example_id=i, kind="response", cluster=f"response:{group[0]}", cluster_size=len(group),
                 group=f"group:{group[0]}") for group in members for i in group]
    write_parquet(pa.Table.from_pylist(rows, schema=NEAR_DUPLICATES_SCHEMA), layout.pool_near_duplicates,
                  {"near_duplicates_version": "nd0", "pool_version": read_metadata(layout.pool_examples)["pool_version"]})


def test_the_cap_applies_to_every_method_and_is_recorded(tmp_path):
    from nait_pipeline.lib.methods import scorers
    from nait_pipeline.lib.methods.run import score_capability

    layout = synthetic_lake.build(tmp_path / "lake")
    for name in ("length", "perplexity"):
        score_capability(layout, scorers()[name], "all", scorers()[name].params())
    model = synthetic_lake.model_info()
    ids = pq.read_table(layout.pool_examples, columns=["example_id"]).column("example_id").to_pylist()
    members = [ids[0:6], ids[10:14]]
    _groups(layout, members)
    for name in ("length", "random", "perplexity_top"):
        method = METHODS[name]
        params = make_params(method.params, {"budget_ratio": 0.5} if name != "random" else {"budget_ratio": 0.5})
        plain = run_selection(layout, method, params, ["math"], model)
        capped = run_selection(layout, method, params, ["math"], model, SelectionOptions(max_per_cluster=1))
        for w in capped:
            for group in members:
                assert len(w["ids"] & set(group)) <= 1
            assert w["n_pool"] == 40 - 5 - 3 and w["duplicate_share"] == 0.0
            lineage = json.loads(pq.read_table(layout.lineage(w["subset_version"])).column("params_json")[0].as_py())
            assert lineage["max_per_cluster"] == 1 and lineage["near_duplicates_left_out"] == 8
        shares = [w["duplicate_share"] for w in plain]
        assert all(s is not None for s in shares)
    layout.pool_near_duplicates.unlink()
    with pytest.raises(FileNotFoundError, match="materialize pool_near_duplicates first"):
        run_selection(layout, METHODS["random"], make_params(METHODS["random"].params, {}), ["math"], model,
                      SelectionOptions(max_per_cluster=1))
    unclustered = run_selection(layout, METHODS["random"], make_params(METHODS["random"].params, {}), ["math"], model)
    assert all(w["duplicate_share"] is None for w in unclustered)


def test_the_asset_clusters_the_stored_pool(tmp_path):
    from nait_pipeline.defs.assets.pool import pool_near_duplicates
    from nait_pipeline.defs.resources import LakeResource

    store = tmp_path / "store"
    layout = synthetic_lake.build(store / "lake")
    pool = pq.read_table(layout.pool_examples)
    outputs = pool.column("output").to_pylist()
    outputs[5] = outputs[6] = "The same long answer given to two different questions about the weather today."
    pool = pool.set_column(pool.schema.get_field_index("output"), "output", pa.array(outputs))
    write_parquet(pool.replace_schema_metadata(None), layout.pool_examples, read_metadata(layout.pool_examples))
    result = dg.materialize([pool_near_duplicates], resources={"pipeline": LakeResource(data_dir=str(store),
                                                                                         store_dir=str(store))})
    assert result.success
    table = pq.read_table(layout.pool_near_duplicates)
    response = table.filter(pa.compute.equal(table.column("kind"), "response")).to_pylist()
    ids = pool.column("example_id").to_pylist()
    assert {(r["example_id"], r["cluster"]) for r in response} >= {(ids[5], f"response:{ids[5]}"),
                                                                    (ids[6], f"response:{ids[5]}")}
    metadata = result.asset_materializations_for_node("pool_near_duplicates")[0].metadata
    assert metadata["per_kind"].value["response"]["clusters"] >= 1
