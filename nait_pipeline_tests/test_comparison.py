"""The comparison table, report and plot on hand-made runs, and the protocol's subset choice and inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nait_pipeline.lib.evaluation import comparison as cmp
from nait_pipeline.lib.evaluation import protocol
from nait_pipeline.lib.io.layout import LakeLayout

RUNS = [
    cmp.Run("nait-math-1", "nait:math", 10, 120.0, 50_000, 30.0, 2_000),
    cmp.Run("random-all-0", "random", 10, 0.0, 0, 20.0, 1_500),
    cmp.Run("random-all-1", "random", 10, 0.0, 0, 22.0, 1_700),
    cmp.Run("random-all-2", "random", 10, 0.0, 0, 24.0, 1_600),
    cmp.Run("full-all-x", "full", 100, 0.0, 0, 200.0, 16_000),
]


def evals(values: dict[str, tuple[float, float]]) -> list[dict]:
    rows = []
    for version, (nll, accuracy) in values.items():
        rows.append(dict(subset_version=version, capability="math", metric="answer_nll", value=nll, n=24))
        rows.append(dict(subset_version=version, capability="math", metric="gsm8k_exact_match", value=accuracy, n=24))
    return rows


EVALS = evals({"nait-math-1": (1.0, 0.25), "random-all-0": (1.2, 0.0), "random-all-1": (1.4, 0.125),
               "random-all-2": (1.6, 0.125), "full-all-x": (0.9, 0.375)})


def test_methods_are_set_against_random_mean_and_spread_and_the_full_pool():
    table = cmp.compare("t", RUNS, EVALS)
    rows = {(r["method"], r["metric"]): r for r in table.to_pylist()}
    nait = rows[("nait:math", "answer_nll")]
    assert nait["random_mean"] == pytest.approx(1.4) and nait["random_std"] == pytest.approx(0.2)  # sample std
    assert nait["full_value"] == 0.9 and nait["delta_vs_random"] == pytest.approx(-0.4)
    assert nait["higher_is_better"] is False and rows[("nait:math", "gsm8k_exact_match")]["higher_is_better"]
    assert (nait["selection_seconds"], nait["selection_tokens"], nait["n_items"]) == (120.0, 50_000, 24)
    random_row = rows[("random", "gsm8k_exact_match")]
    assert random_row["runs"] == 3 and random_row["mean"] == pytest.approx(0.25 / 3)
    assert random_row["std"] == pytest.approx(float(np.std([0.0, 0.125, 0.125], ddof=1)))
    assert random_row["train_seconds"] == pytest.approx(22.0)
    assert rows[("full", "answer_nll")]["std"] is None  # one run: no spread to report
    assert random_row["subset_versions"] == "random-all-0,random-all-1,random-all-2"


def test_report_and_plot_show_every_method(tmp_path):
    table = cmp.compare("t", RUNS, EVALS)
    report = cmp.report_markdown(table)
    lines = report.splitlines()
    assert lines[0].startswith("| method | math gsm8k_exact_match | math answer_nll ↓ |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| nait:math", "| random", "| full"]
    assert "| 1.400 ± 0.200 |" in lines[3] and "| 120 | 50000 | 30 |" in lines[2]
    png = cmp.plot(table, tmp_path / "comparison.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_evaluation_or_a_non_finite_value_is_an_error():
    with pytest.raises(ValueError, match=r"no evaluation for subset version\(s\) \['full-all-x'\]"):
        cmp.compare("t", RUNS, [e for e in EVALS if e["subset_version"] != "full-all-x"])
    broken = [dict(e, value=math.nan) if e["subset_version"] == "random-all-1" else e for e in EVALS]
    with pytest.raises(ValueError, match="random-all-1 has a non-finite"):
        cmp.compare("t", RUNS, broken)


def test_compared_versions_come_from_the_current_subsets_table(tmp_path):
    from datetime import datetime, timezone

    import pyarrow as pa

    from nait_pipeline.lib.io.contract import CURRENT_SUBSETS_SCHEMA
    from nait_pipeline.lib.io.lake import write_parquet

    layout = LakeLayout(tmp_path)
    now = datetime.now(timezone.utc)

    def current(method, rows):
        write_parquet(pa.Table.from_pylist([dict(method=method, capability=c, slot=slot, budget_ratio=r,
                                                 subset_version=v, pool_version=pool, selected_at=now)
                                            for c, slot, r, v, pool in rows], schema=CURRENT_SUBSETS_SCHEMA),
                      layout.current_subsets(method))

    current("nait", [("math", "", 0.1, "nait-math-a", "v1"), ("all", "", 0.1, "nait-all-a", "v1")])
    current("random", [("all", "seed=0", 0.1, "random-all-0", "v1"), ("all", "seed=1", 0.1, "random-all-1", "v1"),
                       ("all", "seed=7", 0.1, "random-all-7", "v1")])  # seed 7 is outside the comparison
    current("length", [("all", "", 0.2, "length-all-b", "v1")])  # another budget
    current("rds_top_b", [("math", "", 0.1, "rds-math-old", "v0")])  # an older pool version
    current("full", [("all", "", 1.0, "full-all-a", "v1")])
    wanted = {"nait-math-a", "nait-all-a", "random-all-0", "random-all-1", "full-all-a"}
    assert set(protocol.compared_subset_versions(layout, "v1", 0.1, (0, 1))) == wanted
    # 0.1 computed another way still matches the budget recorded as 0.1.
    assert set(protocol.compared_subset_versions(layout, "v1", 0.3 / 3, (0, 1))) == wanted
    assert set(protocol.compared_subset_versions(layout, "v1", 0.1, (0, 1), methods=["nait", "full"])) == \
        {"nait-math-a", "nait-all-a", "full-all-a"}
    # One model per method: only the all-capability subsets (untargeted methods and full write "all").
    assert set(protocol.compared_subset_versions(layout, "v1", 0.1, (0, 1), capabilities=["all"])) == \
        wanted - {"nait-math-a"}
    # A new selection replaces the slot: the table, not creation times, says what is current.
    current("nait", [("math", "", 0.1, "nait-math-zscore", "v1"), ("all", "", 0.1, "nait-all-a", "v1")])
    assert "nait-math-zscore" in protocol.compared_subset_versions(layout, "v1", 0.1, (0, 1))
    assert "nait-math-a" not in protocol.compared_subset_versions(layout, "v1", 0.1, (0, 1))


def test_protocol_inputs_link_only_its_pool_and_the_targets(shared_data, tmp_path):
    chosen = protocol.get_protocol("cpu-2k")
    inputs = protocol.prepare_inputs(chosen, shared_data, tmp_path / "input")
    assert [p.name for p in (inputs / "pools").iterdir()] == ["alpaca_cleaned.parquet"]
    assert (inputs / "targets" / "gsm8k.parquet").exists()
    assert protocol.prepare_inputs(chosen, shared_data, tmp_path / "input") == inputs  # idempotent
    (inputs / "pools" / "other.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="other.jsonl"):
        protocol.prepare_inputs(chosen, shared_data, tmp_path / "input")
    with pytest.raises(KeyError, match="unknown protocol 'nope'"):
        protocol.get_protocol("nope")


def test_run_keys_gather_replicates_and_the_base_model(tmp_path):
    import json
    from datetime import datetime, timezone

    import pyarrow as pa

    from nait_pipeline.lib.io.contract import EVALUATIONS_SCHEMA, FINETUNE_SCHEMA, LINEAGE_SCHEMA
    from nait_pipeline.lib.io.lake import write_parquet

    layout = LakeLayout(tmp_path / "lake")
    now = datetime.now(timezone.utc)
    version = "random-all-000000000000"

    def lineage(method):
        write_parquet(pa.Table.from_pylist([dict(
            subset_version=version, pool_version="p", model_id="m", template_hash="t", method=method,
            capability="all", params_json=json.dumps({"budget_ratio": 0.1}), n_pool=10, n_selected=1,
            selected_ids_sha256="s", created_at=now, code_commit=None)], schema=LINEAGE_SCHEMA),
            layout.lineage(version))

    lineage("random")
    for key in (version, f"{version}@order1", "base", "other-all-111111111111@order1"):
        write_parquet(pa.Table.from_pylist([dict(subset_version=key, capability="math", metric="answer_nll", value=1.0,
                                                 n=3, eval_params_json="{}", created_at=now)],
                                           schema=EVALUATIONS_SCHEMA), layout.evaluation(key))
        if key != "base":
            write_parquet(pa.Table.from_pylist([dict(
                subset_version=key, base_model_id="m", model_path="x", train_params_json="{}", examples=1, steps=1,
                tokens=10, final_loss=1.0, seconds=2.0)], schema=FINETUNE_SCHEMA), layout.finetune_run(key))
    keys = cmp.run_keys(layout, [version])
    assert keys == [version, f"{version}@order1", "base"]  # another version's replicate is not gathered
    loaded = cmp.load_runs(layout, keys)
    assert [r.method for r in loaded] == ["random", "random", "base"]
    assert loaded[1].train_seconds == 2.0 and loaded[2].train_seconds == 0.0
    # Another seeded method can serve as the reference (stratified random on the mixed pool).
    lineage("random_stratified")
    assert [r.method for r in cmp.load_runs(layout, keys)] == ["random_stratified", "random_stratified", "base"]
    assert [r.method for r in cmp.load_runs(layout, keys, random_reference="random_stratified")] == \
        ["random", "random", "base"]


def _diagnostics(ratio, rho, overlap, enrichment):
    import json
    return {"length_ratio": ratio, "spearman_length": rho, "overlap_longest": overlap,
            "enrichment_json": json.dumps(enrichment)}


def test_diagnostics_report_averages_a_methods_subsets_and_names_the_enriched_sources():
    runs = [*RUNS, cmp.Run("nait-math-1@order1", "nait:math", 10, 120.0, 50_000, 30.0, 2_000)]
    diagnostics = {
        "nait-math-1": _diagnostics(0.9, 0.1, 0.05, {"gsm8k": 4.0, "alpaca": 0.5, "code": 1.0}),
        "random-all-0": _diagnostics(1.0, None, 0.1, {"gsm8k": 1.0, "alpaca": 1.0, "code": 1.0}),
        "random-all-1": _diagnostics(1.2, None, 0.2, {"gsm8k": 3.0, "alpaca": 0.0, "code": 1.0}),
    }  # random-all-2 and full have none: left out, not an error
    lines = cmp.diagnostics_markdown(runs, diagnostics, top_sources=2).splitlines()
    assert lines[0] == "| method | length ÷ pool | ρ(score, length) | overlap longest-k | most enriched sources |"
    # the order replicate trains the same subset: counted once
    assert lines[2] == "| nait:math | 0.90 | 0.10 | 0.05 | gsm8k ×4.0, code ×1.0 |"
    # two random seeds averaged; no score, so no Spearman
    assert lines[3] == "| random | 1.10 | — | 0.15 | gsm8k ×2.0, code ×1.0 |"
    assert len(lines) == 4
    assert cmp.diagnostics_markdown(runs, {}) == "no subset diagnostics for the compared subsets"
