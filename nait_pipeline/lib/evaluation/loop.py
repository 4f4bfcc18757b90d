"""The loop's last two stages on the lake, Dagster-free: evaluate one trained model (a run key) on every
capability's test split, and compare the evaluated runs of a budget against random and the full pool.
The ``evaluation`` and ``comparison`` assets call these and turn what they return into metadata."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from nait_pipeline.lib.evaluation import comparison as cmp
from nait_pipeline.lib.evaluation import intervals, items
from nait_pipeline.lib.evaluation.benchmarks import EvalConfig, evaluate_capability
from nait_pipeline.lib.evaluation.evaluate import choose_generation_backend, make_generator
from nait_pipeline.lib.evaluation.protocol import compared_subset_versions
from nait_pipeline.lib.io.contract import EVALUATION_ITEMS_SCHEMA, EVALUATIONS_SCHEMA
from nait_pipeline.lib.io.lake import atomic_path, read_table, write_parquet
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.pool_view import PoolView


@dataclass
class EvaluationRun:
    table: pa.Table  # one row per capability and metric (the `evaluations` view)
    item_table: pa.Table  # one row per item and metric (the `evaluation_items` view)
    backend: str
    no_test_rows: list[str]  # capabilities whose test split is empty
    seconds: float


def evaluate_run(layout: LakeLayout, run_key: str, model_dir: Path, capabilities: Sequence[str], config: EvalConfig,
                 generation_backend: str = "auto", device: str = "cpu", log: Callable[[str], None] = print,
                 on_capability: Callable[[int, int], None] | None = None) -> EvaluationRun:
    """Evaluate the model at ``model_dir`` on each capability's test split (a fixed-seed sample for the
    generated metrics, fixed items for the per-item scores) and write both tables for ``run_key``."""
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate

    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"no fine-tuned model at {model_dir}: materialize finetuned_model[{run_key}]")
    model = model_io.load_causal_lm(model_dir, device=device)
    template = ChatTemplate(model_io.load_tokenizer(model_dir))
    backend = choose_generation_backend(generation_backend)
    log(f"generation backend: {backend}")
    generator = make_generator(backend, model, model_dir, template)
    params = json.dumps({**config.__dict__, "generation_backend": backend}, sort_keys=True)
    created = datetime.now(timezone.utc)
    records, no_test_rows, item_rows = [], [], []
    started = time.perf_counter()
    for done, capability in enumerate(capabilities, start=1):
        path = layout.target_test(capability)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: materialize target_test_sets[{capability}] first")
        rows = read_table(path).to_pylist()
        if not rows:
            no_test_rows.append(capability)  # reported by the caller
            continue
        for result in evaluate_capability(model, template, capability, rows, config, log, generator):
            records.append(dict(subset_version=run_key, capability=capability, eval_params_json=params,
                                created_at=created, **result))
        scored = items.score_capability_items(model, template, capability, rows, config.items_per_capability)
        item_rows += [dict(subset_version=run_key, capability=capability, eval_params_json=params,
                           **dataclasses.asdict(item)) for item in scored]
        for (family, metric), summary in items.aggregate(scored).items():
            records.append(dict(subset_version=run_key, capability=capability, eval_params_json=params,
                                created_at=created, metric=f"{family}_{metric}", value=summary["value"],
                                n=summary["n"]))
        if on_capability is not None:
            on_capability(done, len(capabilities))
    table = pa.Table.from_pylist(records, schema=EVALUATIONS_SCHEMA)
    item_table = pa.Table.from_pylist(item_rows, schema=EVALUATION_ITEMS_SCHEMA)
    write_parquet(item_table, layout.evaluation_items(run_key))
    write_parquet(table, layout.evaluation(run_key))
    return EvaluationRun(table, item_table, backend, no_test_rows, time.perf_counter() - started)


@dataclass
class ComparisonRun:
    table: pa.Table  # the `comparisons` rows
    interval_table: pa.Table  # the `comparison_intervals` rows
    report: str  # markdown: headline metrics and cost, Δ with bounds, the subsets' diagnostics
    evaluated: list[str]  # the run keys compared
    not_evaluated: list[str]  # compared subset versions without an evaluation yet (left out)
    path: Path
    plot: Path
    interval_plot: Path | None


def run_comparison(layout: LakeLayout, name: str, budget_ratio: float, random_seeds: Sequence[int],
                   methods: Sequence[str] | None, capabilities: Sequence[str] | None,
                   random_reference: str) -> ComparisonRun:
    """Compare, on the current pool version, the subsets each method's last selection wrote at
    ``budget_ratio`` (every evaluated run of them), and write the table, intervals, report and plots."""
    from nait_pipeline.lib.methods import METHODS

    pool_version = PoolView.open(layout).version
    unknown = sorted(set(methods or []) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; registered: {sorted(METHODS)}")
    versions = compared_subset_versions(layout, pool_version, budget_ratio, random_seeds, methods, capabilities)
    evaluated = [v for v in cmp.run_keys(layout, versions) if layout.evaluation(v).exists()]
    not_evaluated = sorted(set(versions) - set(evaluated))
    if not evaluated:
        raise ValueError(f"none of the {len(versions)} subset versions at budget {budget_ratio} on pool "
                         f"{pool_version} has an evaluation: materialize finetuned_model and evaluation first")
    compared_runs = cmp.load_runs(layout, evaluated, random_reference)
    table = cmp.compare(name, compared_runs, cmp.load_evaluations(layout, evaluated))
    destination = layout.comparison(name)
    run_record = {"pool_version": pool_version, "budget_ratio": budget_ratio, "random_seeds": list(random_seeds),
                  "random_reference": random_reference, "subset_versions": evaluated}
    write_parquet(table, destination, run_record)
    interval_table = intervals.interval_table(name, compared_runs, intervals.load_items(layout, evaluated))
    write_parquet(interval_table, layout.comparison_intervals(name), run_record)
    report = (cmp.report_markdown(table) + "\n\nPer-item metrics (higher is better), Δ [one-sided 95 % bounds] "
              "against random and the full pool:\n\n" + intervals.report_markdown(interval_table) +
              "\n\nOffline diagnostics of the compared subsets (enrichment: share of the subset ÷ share of the "
              "pool):\n\n" + cmp.diagnostics_markdown(compared_runs, cmp.load_diagnostics(layout, compared_runs)))
    with atomic_path(destination.with_suffix(".md"), ".md") as tmp:
        tmp.write_text(f"# Comparison {name}\n\nPool version {pool_version}, budget {budget_ratio}, "
                       f"random = {random_reference}, seeds {list(random_seeds)}.\n\n{report}\n")
    figure = cmp.plot(table, destination.with_suffix(".png"))
    interval_figure = intervals.plot(interval_table, destination.with_name(f"{name}_intervals.png"))
    return ComparisonRun(table, interval_table, report, evaluated, not_evaluated, destination, figure, interval_figure)
