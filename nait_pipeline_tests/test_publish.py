"""Publishing a subset: a folder `datasets` loads, with a dataset card generated from the lake."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from nait_pipeline.lib.evaluation.publish import publish
from nait_pipeline.lib.io.contract import INTERVALS_SCHEMA
from nait_pipeline.lib.io.lake import read_metadata, write_parquet
from nait_pipeline.lib.methods import METHODS, scorers
from nait_pipeline.lib.methods.audit import ChangedSubsetError
from nait_pipeline.lib.methods.base import make_params
from nait_pipeline.lib.methods.run import run_selection, score_capability
from nait_pipeline_tests import synthetic_lake


@pytest.fixture
def selected(tmp_path):
    layout = synthetic_lake.build(tmp_path / "lake")
    score_capability(layout, scorers()["length"], "all", scorers()["length"].params())
    [written] = run_selection(layout, METHODS["length"], make_params(METHODS["length"].params, {}), ["math"],
                              synthetic_lake.model_info())
    return layout, written


def test_a_published_subset_loads_with_datasets_and_its_card_comes_from_the_lake(selected, tmp_path):
    import datasets

    layout, written = selected
    version = written["subset_version"]
    out = publish(layout, version, tmp_path / "published", {"pool": "mit"})
    loaded = datasets.load_dataset("parquet", data_dir=str(out), cache_dir=str(tmp_path / "cache"))["train"]
    subset = pq.read_table(layout.subset(version)).sort_by("rank")
    assert loaded["example_id"] == subset.column("example_id").to_pylist()
    assert loaded["rank"] == subset.column("rank").to_pylist() and loaded["score"] == subset.column("score").to_pylist()
    assert set(loaded.column_names) >= {"instruction", "input", "output", "source", "pool", "subset_version"}

    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["license"] == ["mit"] and header["size_categories"] == ["n<1K"]
    assert header["configs"][0]["data_files"][0]["split"] == "train"
    lineage = pq.read_table(layout.lineage(version)).to_pylist()[0]
    for fact in (version, lineage["pool_version"], lineage["model_id"], lineage["template_hash"],
                 lineage["code_commit"], lineage["selected_ids_sha256"]):
        assert fact in card
    assert "| near-duplicate share | not checked |" in card  # this lake was never clustered
    assert "| contaminated rows held (test items in a row) | 0 |" in card
    assert "None were run for `length`" in card

    # A protocol's intervals for the method appear once they exist; republishing replaces the folder.
    interval = {name: None for name in INTERVALS_SCHEMA.names}
    interval.update(comparison="cpu-mix", method="length", reference="random_stratified", eval_capability="math",
                    metric="gsm8k_exact_match", delta=0.01, lower=-0.02, upper=0.04, better=False,
                    label="+0.010 [-0.020, +0.040]")
    write_parquet(pa.Table.from_pylist([interval], schema=INTERVALS_SCHEMA), layout.comparison_intervals("cpu-mix"))
    card = (publish(layout, version, out) / "README.md").read_text()
    assert "| cpu-mix | math | gsm8k_exact_match | +0.010 [-0.020, +0.040] | no |" in card
    assert "unknown: set it under [licenses]" in card  # no license given for the pool this time


def test_publishing_refuses_changed_rows_and_a_folder_it_did_not_write(selected, tmp_path):
    layout, written = selected
    version = written["subset_version"]
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not a publication"):
        publish(layout, version, stranger)
    assert (stranger / "notes.txt").exists()
    pool = pq.read_table(layout.pool_examples)
    chosen = sorted(written["ids"])[0]
    hashes = ["rewritten" if i == chosen else h for i, h in zip(pool.column("example_id").to_pylist(),
                                                                pool.column("content_hash").to_pylist())]
    pool = pool.set_column(pool.schema.get_field_index("content_hash"), "content_hash", pa.array(hashes))
    write_parquet(pool.replace_schema_metadata(None), layout.pool_examples, read_metadata(layout.pool_examples))
    with pytest.raises(ChangedSubsetError, match="changed text since the selection"):
        publish(layout, version, tmp_path / "out")
    assert not (tmp_path / "out").exists()
