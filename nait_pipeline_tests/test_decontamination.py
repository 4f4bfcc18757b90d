"""Decontamination: the coverage rule on hand-made texts, and every method leaving contaminated rows out."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nait_pipeline.lib.data.decontamination import decontaminate_lake, find_contamination
from nait_pipeline.lib.io.contract import CONTAMINATION_SCHEMA, TARGET_SCHEMA
from nait_pipeline.lib.io.lake import read_metadata, write_parquet
from nait_pipeline.lib.methods import METHODS, MethodInputError, scorers
from nait_pipeline.lib.methods.base import SelectionOptions, make_params
from nait_pipeline.lib.methods.run import run_selection, score_capability
from nait_pipeline_tests import synthetic_lake

QUESTION = ("Janets ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for "
            "her friends every day with four.")  # 24 words: 12 distinct 13-grams


def _tests(prompts: dict[str, str], benchmark: str = "gsm8k.parquet") -> pa.Table:
    return pa.table({"example_id": list(prompts), "capability": ["math"] * len(prompts),
                     "file": [benchmark] * len(prompts), "prompt": list(prompts.values())})


def _pool(rows: dict[str, tuple[str, str, str]]) -> pa.Table:
    return pa.table({"example_id": list(rows), "instruction": [r[0] for r in rows.values()],
                     "input": [r[1] for r in rows.values()], "output": [r[2] for r in rows.values()]})


def test_coverage_by_hand():
    words = QUESTION.split()
    half = " ".join(words[:18])  # the first 18 words hold 6 of the 12 13-grams: coverage 0.5
    less = " ".join(words[:17])  # 5 of 12: below the threshold
    pool = _pool({"whole": ("Solve: " + QUESTION, "", "x"), "half": ("", "", half), "less": (less, "", ""),
                  "exact": ("JANETS ducks lay 16 eggs per day.  She eats three", "for breakfast every morning and "
                            "bakes muffins for her friends every day with four!", "y"),
                  "clean": ("What is the capital of France?", "", "Paris")})
    found = {(r["example_id"], r["field"]): r for r in find_contamination(pool, _tests({"g1": QUESTION})).table.to_pylist()}
    assert found[("whole", "instruction")]["coverage"] == 1.0 and not found[("whole", "instruction")]["exact_prompt"]
    assert found[("half", "output")]["coverage"] == 0.5
    assert ("less", "instruction") not in found and not any(k[0] == "clean" for k in found)
    # Instruction and input together are the prompt once case, spacing and punctuation are set aside.
    assert found[("exact", "instruction")]["exact_prompt"] and found[("exact", "instruction")]["benchmark"] == "gsm8k"


def test_short_items_match_whole_and_very_short_ones_only_exactly():
    pool = _pool({"a": ("tell me: ducks lay sixteen eggs per day, right?", "", ""), "b": ("not true and true is", "", ""),
                  "c": ("Is not True and True false?", "", "")})
    tests = _tests({"s6": "ducks lay sixteen eggs per day", "s4": "not True and True is"}, "bbh.parquet")
    found = {(r["example_id"], r["test_id"]) for r in find_contamination(pool, tests).table.to_pylist()}
    # 6 words: one 6-gram, found whole; 5 words: below min_words, so only the exact prompt ("b") counts.
    assert found == {("a", "s6"), ("b", "s4")}
    with pytest.raises(ValueError, match="threshold"):
        find_contamination(pool, tests, threshold=0)


def test_the_lake_check_names_items_without_text_and_its_version_follows_the_rule(tmp_path):
    layout = synthetic_lake.build(tmp_path / "lake")
    pool = pq.read_table(layout.pool_examples).to_pylist()
    tests = [dict(example_id="t1", capability="math", task="gsm8k", split="test", file="gsm8k.parquet",
                  prompt=pool[3]["instruction"] + " " + pool[3]["input"], answer="1", extra_json=None),
             dict(example_id="t2", capability="math", task="gsm8k", split="test", file="gsm8k.parquet", prompt="  ",
                  answer="2", extra_json=None)]
    write_parquet(pa.Table.from_pylist(tests, schema=TARGET_SCHEMA), layout.target_test("math"))
    with pytest.raises(FileNotFoundError, match=r"no test split in the lake for \['code'\]"):
        decontaminate_lake(layout, ["math", "code"])
    result, version = decontaminate_lake(layout, ["math"])
    assert result.contaminated_ids == {pool[3]["example_id"]} and result.stats["items_without_text"] == ["t2"]
    assert read_metadata(layout.pool_contamination)["contamination_version"] == version
    assert decontaminate_lake(layout, ["math"], threshold=0.8)[1] != version


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """The synthetic lake with every scorer's scores and NAIT's directions."""
    from nait_pipeline.lib.methods.nait.nait_method import write_directions

    layout = synthetic_lake.build(tmp_path_factory.mktemp("decontaminated") / "lake")
    for capability in synthetic_lake.CAPABILITIES:
        write_directions(layout, capability)
    for scorer in scorers().values():
        for key in synthetic_lake.CAPABILITIES if scorer.targeted else ["all"]:
            score_capability(layout, scorer, key, scorer.params())
    return layout


def _contaminate(layout, ids: list[str]) -> None:
    rows = [dict(example_id=i, field="instruction", benchmark="gsm8k", capability="math", test_id=f"t-{i}",
                 coverage=1.0, exact_prompt=False) for i in ids]
    write_parquet(pa.Table.from_pylist(rows, schema=CONTAMINATION_SCHEMA), layout.pool_contamination,
                  {"contamination_version": "dirty", "pool_version": read_metadata(layout.pool_examples)["pool_version"]})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_leaves_contaminated_rows_out_by_default(lake, name):
    method = METHODS[name]
    params = make_params(method.params, {"budget_ratio": 0.1} if name == "g2is" else {})
    model = synthetic_lake.model_info()
    _contaminate(lake, [])
    clean = {(w["capability"], w["slot"]): w for w in run_selection(lake, method, params, list(synthetic_lake.CAPABILITIES), model)}
    # Contaminate two rows each subset took: they go, the rest of the pool is still there to choose from.
    taken = sorted({i for w in clean.values() for i in w["ids"]})
    dirty = [taken[0], taken[-1]]
    _contaminate(lake, dirty)
    written = run_selection(lake, method, params, list(synthetic_lake.CAPABILITIES), model)
    for w in written:
        assert not w["ids"] & set(dirty), f"{name} {w['capability']} took a contaminated row"
        counts = w["contamination"]
        in_pool = sum(i in clean[(w["capability"], w["slot"])]["ids"] for i in dirty)
        assert counts["contaminated_selected"] == 0 and counts["contaminated_would_take"] == in_pool
        candidates = clean[(w["capability"], w["slot"])]["n_pool"]
        assert counts["contaminated_excluded"] == sum(i in set(clean_ids(lake, method)) for i in dirty)
        assert w["n_pool"] == candidates - counts["contaminated_excluded"]
        lineage = json.loads(pq.read_table(lake.lineage(w["subset_version"])).column("params_json")[0].as_py())
        if counts["contaminated_excluded"]:
            assert lineage["contaminated_left_out"] == counts["contaminated_excluded"]
        diagnostics = pq.read_table(lake.subset_diagnostics(w["subset_version"])).to_pylist()[0]
        assert diagnostics["contaminated_would_take"] == in_pool
    kept = run_selection(lake, method, params, list(synthetic_lake.CAPABILITIES), model,
                         SelectionOptions(exclude_contaminated=False))
    for w in kept:  # the switch off: the clean pool's subsets, contaminated rows counted
        assert w["subset_version"] == clean[(w["capability"], w["slot"])]["subset_version"]
        assert w["contamination"]["contaminated_selected"] == len(w["ids"] & set(dirty))


def clean_ids(layout, method) -> list[str]:
    """The rows ``method`` selects from (its scorer's ids; the kept pool for random methods)."""
    if method.scorer is None:
        return pq.read_table(layout.pool_examples, columns=["example_id"]).column("example_id").to_pylist()
    key = "math" if method.scorer.targeted else "all"
    return pq.read_table(layout.scores(method.scorer.name, key), columns=["example_id"]).column("example_id").to_pylist()


def test_a_check_of_another_pool_version_is_refused(lake):
    path = lake.pool_contamination
    write_parquet(CONTAMINATION_SCHEMA.empty_table(), path, {"contamination_version": "old", "pool_version": "older"})
    method = METHODS["random"]
    with pytest.raises(MethodInputError, match="checked on pool version older.*re-materialize pool_contamination"):
        run_selection(lake, method, make_params(method.params, {}), ["math"], synthetic_lake.model_info())
    path.unlink()
    with pytest.raises(FileNotFoundError, match="materialize pool_contamination first"):
        run_selection(lake, method, make_params(method.params, {}), ["math"], synthetic_lake.model_info())
    # Switched off, an unchecked pool is selected from as it is; the counts say it was not checked.
    written = run_selection(lake, method, make_params(method.params, {}), ["math"], synthetic_lake.model_info(),
                            SelectionOptions(exclude_contaminated=False))
    assert all(w["contamination"]["contaminated_selected"] is None for w in written)
    assert np.isfinite(len(written))
