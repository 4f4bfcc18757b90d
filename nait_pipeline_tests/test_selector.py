"""LP's selector on the real embedded model: perplexity trajectories (checked against the HF loss),
a killed run resuming with identical perplexities, a row whose response is truncated away, and the
LP assets end to end from a pool file to a subset."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from nait_pipeline.lib.features.trajectories import SelectorConfig, response_perplexities, train_selector
from nait_pipeline.lib.models import model_io
from nait_pipeline.lib.models.template import ChatTemplate
from nait_pipeline.lib.models.train import collate

ROWS = [{"instruction": f"Add {i} and {i + 3}.", "input": "", "output": f"{i} plus {i + 3} is {2 * i + 3}."}
        for i in range(6)]
# A prompt longer than max_length: truncation leaves it no response token.
ROWS.append({"instruction": " ".join(["Explain every step of long division in detail."] * 12), "input": "",
             "output": "Divide, multiply, subtract, bring down."})
IDS = [f"row-{i}" for i in range(len(ROWS))]
HASHES = [f"h{i}" for i in range(len(ROWS))]
CONFIG = SelectorConfig(epochs=2, batch_size=4, max_length=64, learning_rate=1e-4, seed=0)


class Killed(Exception):
    pass


def test_perplexity_is_the_exp_of_the_hf_response_loss(model_dir):
    model = model_io.load_causal_lm(model_dir).eval()
    tokenizer = model_io.load_tokenizer(model_dir)
    examples = [ChatTemplate(tokenizer).tokenize(r["instruction"], r["input"], r["output"], 64) for r in ROWS]
    perplexity, counted = response_perplexities(model, examples, tokenizer.pad_token_id, batch_tokens=256)
    for index in (0, 3):
        input_ids, mask, labels = collate([examples[index]], tokenizer.pad_token_id)
        with torch.no_grad():
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        assert perplexity[index] == pytest.approx(float(torch.exp(loss)), rel=1e-4)
        assert counted[index] == len(examples[index].input_ids) - examples[index].response_start
    assert perplexity[6] == 0 and counted[6] == 0  # no response token survived truncation


def test_a_killed_selector_run_resumes_with_identical_perplexities(model_dir, tmp_path):
    whole = train_selector(model_dir, "m@0", ROWS, IDS, HASHES, CONFIG, tmp_path / "whole")
    assert whole.perplexities.shape == (7, 3) and whole.no_response.tolist() == [False] * 6 + [True]
    assert whole.perplexities[:6, 2].mean() < whole.perplexities[:6, 0].mean()  # the selector learnt

    def kill_in_epoch_two(stage: str, done: int, total: int, tokens: int) -> None:
        if stage.startswith("selector epoch 2") and done > 0:  # after an optimizer step of epoch 2
            raise Killed

    killed_dir = tmp_path / "killed"
    with pytest.raises(Killed):
        train_selector(model_dir, "m@0", ROWS, IDS, HASHES, CONFIG, killed_dir, progress=kill_in_epoch_two)
    assert json.loads((killed_dir / "checkpoint" / "epoch.json").read_text()) == {"epoch": 1}
    assert not (killed_dir / "ppl_epoch_2.parquet").exists()
    resumed = train_selector(model_dir, "m@0", ROWS, IDS, HASHES, CONFIG, killed_dir)
    assert resumed.reused_epochs == 2  # P0 and P1 read back, epoch 2 trained from the checkpoint
    np.testing.assert_array_equal(resumed.perplexities, whole.perplexities)
    assert resumed.store_version == whole.store_version

    again = train_selector(model_dir, "m@0", ROWS, IDS, HASHES, CONFIG, tmp_path / "whole")
    assert again.reused_epochs == 3
    np.testing.assert_array_equal(again.perplexities, whole.perplexities)
    other = train_selector(model_dir, "m@0", ROWS, IDS, HASHES, SelectorConfig(**{**CONFIG.as_dict(), "epochs": 1}),
                           tmp_path / "whole")
    assert other.reused_epochs == 0 and other.perplexities.shape == (7, 2)  # another config: nothing reused


def test_lp_assets_from_a_pool_file_to_a_subset(model_dir, tmp_path):
    from nait_pipeline.defs.assets.methods import score_assets, subset_assets
    from nait_pipeline.defs.assets.model import base_model
    from nait_pipeline.defs.assets.pool import it_pool, pool_contamination
    from nait_pipeline.defs.assets.selector import selector_clusters, selector_trajectories
    from nait_pipeline.defs.resources import LakeResource
    from nait_pipeline.lib.io.layout import LakeLayout

    data = tmp_path / "data"
    (data / "pools").mkdir(parents=True)
    (data / "pools" / "tiny.jsonl").write_text("".join(json.dumps(
        {"instruction": f"What is {i} times {i % 4 + 2}?" if i % 2 else f"Name a colour like number {i}.",
         "output": f"It is {i * (i % 4 + 2)}." if i % 2 else f"Colour {i} is a shade of blue."}) + "\n"
        for i in range(12)))
    resource = LakeResource(data_dir=str(data), store_dir=str(tmp_path / "store"), model=str(model_dir))
    assets = [base_model, it_pool, pool_contamination, selector_trajectories, selector_clusters, *score_assets,
              *subset_assets]
    config = {"ops": {"it_pool": {"config": {"settle_seconds": 0.0}},
                      "selector_trajectories": {"config": {"slice_rows": 10, "epochs": 2, "max_length": 64,
                                                           "learning_rate": 1e-4}},
                      "selector_clusters": {"config": {"rows_per_cluster": 5}},
                      "lp_low_subsets": {"config": {"budget_ratio": 0.5}}}}
    with dg.instance_for_test() as instance:
        result = dg.materialize(assets, selection=["base_model", "it_pool", "pool_contamination", "selector_trajectories",
                                                   "selector_clusters", "lp_scores", "lp_low_subsets"],
                                instance=instance, resources={"pipeline": resource}, run_config=config)
        assert result.success
        trajectories = result.asset_materializations_for_node("selector_trajectories")[0].metadata
        assert trajectories["row_count"].value == 10 and trajectories["pool_rows"].value == 12
        clusters = result.asset_materializations_for_node("selector_clusters")[0].metadata
        assert clusters["clusters"].value == 2
        layout = LakeLayout(tmp_path / "store" / "lake")
        version = result.asset_materializations_for_node("lp_low_subsets")[0].metadata["subset_versions"].value["all"]
        subset = pq.read_table(layout.subset(version))
        scores = pq.read_table(layout.scores("lp", "all"))
        sizes = np.bincount(scores.column("cluster").to_numpy())
        assert len(subset) == sum((n + 1) // 2 for n in sizes)  # q = 2: the first chunk is ceil(n / 2)
        lineage = pq.read_table(layout.lineage(version)).to_pylist()[0]
        assert json.loads(lineage["params_json"])["selector_model_id"] == lineage["model_id"]  # the base model
        # The hardest row of each cluster (lowest LP) is in the subset.
        by_cluster = {}
        for row in scores.to_pylist():
            best = by_cluster.get(row["cluster"])
            if best is None or (row["score"], row["example_id"]) < (best["score"], best["example_id"]):
                by_cluster[row["cluster"]] = row
        assert {r["example_id"] for r in by_cluster.values()} <= set(subset.column("example_id").to_pylist())
