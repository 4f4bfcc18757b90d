"""Per-capability comparisons with honest uncertainty, from the per-item evaluation rows.

For every method label, capability and per-item metric, against each reference (``random``: its
seeded runs; ``full``: the full-pool model): the runs x common-items matrices of both sides go to
:func:`~nait_pipeline.lib.evaluation.statistics.compare` (Δ, SE from runs and items, one-sided 95 %
bounds, p) and :func:`~nait_pipeline.lib.evaluation.statistics.bootstrap` (items resampled within
their benchmark, runs within each arm). A side with fewer than 2 runs gives Δ and says why there is
no interval. "Beats random on every capability" is the intersection of the per-capability tests
(each method's own claim); across methods, "which methods beat random where" is one family of every
method x capability test against random, Holm-corrected (``better_holm``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from nait_pipeline.lib.evaluation import statistics as st
from nait_pipeline.lib.evaluation.comparison import Run
from nait_pipeline.lib.io.contract import INTERVALS_SCHEMA
from nait_pipeline.lib.io.lake import atomic_path, read_table
from nait_pipeline.lib.io.layout import LakeLayout

REFERENCES = ("random", "full", "base")  # base: the model before fine-tuning, a fixed reference


def load_items(layout: LakeLayout, versions: Sequence[str]) -> list[dict]:
    rows = []
    for version in versions:
        path = layout.evaluation_items(version)
        if path.exists():
            rows += read_table(path, columns=["subset_version", "capability", "benchmark", "item_id", "metric",
                                                 "value", "status"]).to_pylist()
    return rows


def interval_table(name: str, runs: Sequence[Run], item_rows: Sequence[dict], bootstrap_replicates: int = 1000
                   ) -> pa.Table:
    label_of = {run.subset_version: run.method for run in runs}
    # (label, capability, metric) -> subset version -> item id -> value; and each item's benchmark
    values: dict[tuple[str, str, str], dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    benchmark_of: dict[str, str] = {}
    for row in item_rows:
        label = label_of.get(row["subset_version"])
        if label is None or row["status"] != "ok":
            continue
        values[(label, row["capability"], row["metric"])][row["subset_version"]][row["item_id"]] = row["value"]
        benchmark_of[row["item_id"]] = row["benchmark"].split("/")[0]
    records = []
    for (label, capability, metric), by_run in sorted(values.items()):
        if label in REFERENCES:
            if label == "base":
                continue
            # the references themselves against the zero point: does fine-tuning help at all?
            if not values.get(("base", capability, metric)):
                continue
        for reference in REFERENCES:
            if reference == label:
                continue  # a reference against itself is zero by construction
            reference_runs = values.get((reference, capability, metric))
            if not reference_runs:
                continue
            arms = [list(by_run.values()), list(reference_runs.values())]
            common = sorted(set.intersection(*(set(run) for arm in arms for run in arm)))
            if not common:
                continue
            method_matrix, reference_matrix = (np.array([[run[i] for i in common] for run in arm]) for arm in arms)
            result = st.compare(method_matrix, reference_matrix, fixed_reference=reference == "base")
            boot = None if reference == "base" else st.bootstrap(
                method_matrix, reference_matrix, strata=[benchmark_of[i] for i in common],
                replicates=bootstrap_replicates)
            records.append(dict(
                comparison=name, method=label, reference=reference, eval_capability=capability, metric=metric,
                delta=result.delta, se=result.se, df=result.df, lower=result.lower, upper=result.upper,
                p_value=result.p_value, bootstrap_lower=boot[0] if boot else None,
                bootstrap_upper=boot[1] if boot else None, runs_method=result.runs_method,
                runs_reference=result.runs_reference, items=result.items, better=result.better,
                no_interval=result.no_interval, label=result.label()))
    family = {i: r["p_value"] for i, r in enumerate(records)
              if r["reference"] == "random" and r["method"] not in REFERENCES and r["p_value"] is not None}
    rejected = st.holm(family)
    for i, record in enumerate(records):
        record["better_holm"] = rejected.get(i) if i in family else None
    return pa.Table.from_pylist(records, schema=INTERVALS_SCHEMA)


def beats_random_everywhere(table: pa.Table) -> dict[str, bool]:
    """Per method: the intersection-union test over the capabilities it was compared with random on."""
    by_method: dict[str, list[bool]] = defaultdict(list)
    for row in table.to_pylist():
        if row["reference"] == "random":
            by_method[row["method"]].append(bool(row["better"]))
    return {method: bool(tests) and all(tests) for method, tests in sorted(by_method.items())}


def report_markdown(table: pa.Table) -> str:
    """Δ [low, high] per method and capability against random and full (per-item metrics, higher is better)."""
    rows = table.to_pylist()
    if not rows:
        return "no per-item evaluation rows to compare"
    capabilities = sorted({r["eval_capability"] for r in rows})
    # a cell without an interval says so briefly; the reasons are listed once under the table
    cell = {(r["method"], r["reference"], r["eval_capability"]):
            (r["label"] + (" †" if r["better_holm"] else "")) if r["lower"] is not None
            else f"{r['delta']:+.3f} (no interval)" for r in rows}
    family = sum(1 for r in rows if r["better_holm"] is not None)
    reasons = sorted({r["no_interval"] for r in rows if r["lower"] is None and r["no_interval"]})
    everywhere = beats_random_everywhere(table)
    header = ["method", "vs"] + capabilities + ["beats random on every capability"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in sorted({r["method"] for r in rows}):
        for reference in REFERENCES:
            if not any(k[0] == method and k[1] == reference for k in cell):
                continue
            verdict = ("yes" if everywhere.get(method) else "no") if reference == "random" else ""
            lines.append("| " + " | ".join([method, reference] + [cell.get((method, reference, c), "")
                                                                   for c in capabilities] + [verdict]) + " |")
    if family:
        lines += ["", f"†: better than random after Holm's correction over the {family} method × capability "
                      "comparisons with random (which methods beat random where, as one family)."]
    if reasons:
        lines += ["", "No interval: " + "; ".join(reasons) + "."]
    return "\n".join(lines)


def plot(table: pa.Table, destination: Path, reference: str = "random") -> Path | None:
    """Per capability, each method's Δ against ``reference`` with its one-sided 95 % bounds as a bar
    (a hollow point where there is no interval) and the zero line: right of zero is better. None when
    nothing was compared with that reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table.to_pylist() if r["reference"] == reference and r["method"] != reference]
    if not rows:
        return None
    capabilities = sorted({r["eval_capability"] for r in rows})
    methods = sorted({r["method"] for r in rows}, reverse=True)  # top to bottom in name order
    figure, axes = plt.subplots(1, len(capabilities), figsize=(3.0 * len(capabilities), 0.45 * len(methods) + 1.4),
                                dpi=90, sharey=True, squeeze=False)
    for axis, capability in zip(axes[0], capabilities):
        found = {r["method"]: r for r in rows if r["eval_capability"] == capability}
        axis.axvline(0.0, color="#777777", linewidth=1)
        for y, method in enumerate(methods):
            row = found.get(method)
            if row is None:
                continue
            if row["lower"] is not None:
                axis.plot([row["lower"], row["upper"]], [y, y], color="#4f6db8", linewidth=2)
                axis.plot(row["delta"], y, "o", color="#2e7d32" if row["better"] else "#4f6db8")
            else:
                axis.plot(row["delta"], y, "o", markerfacecolor="white", color="#4f6db8")
        axis.set_yticks(range(len(methods)), methods, fontsize=7)
        axis.set_title(f"{capability}: Δ vs {reference}", fontsize=8)
        axis.tick_params(axis="x", labelsize=7)
    figure.text(0.5, 0.01, "per-item log-probability, higher is better; bar: one-sided 95 % bounds; "
                "green: lower bound > 0; hollow: no interval", ha="center", fontsize=7)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    with atomic_path(destination, ".png") as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return destination
