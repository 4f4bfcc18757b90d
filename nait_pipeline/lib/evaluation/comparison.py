"""Compare selection methods by the models trained on their subsets.

Each evaluated subset version becomes a run of a method label (``nait:math``, ``nait:all``,
``random``, ``full``); runs of one label (random seeds) are summarised by mean and sample standard
deviation. Every row carries the random baseline and the full-pool reference of the same metric, and
the method's selection cost: wall time and tokens through the model, read back from the lake's own
records (featurization stats of the shards and target sets it used, scoring time).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from nait_pipeline.lib.evaluation.runs import BASE, parse_run_key
from nait_pipeline.lib.io.contract import COMPARISON_SCHEMA
from nait_pipeline.lib.io.lake import atomic_path, read_metadata, read_table
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.settings import CAPABILITIES as BUILT_IN

# The measure a reader looks at first for each capability; answer NLL is reported for all of them.
HEADLINE_METRIC = {"math": "gsm8k_exact_match", "code": "mbpp_pass@1", "reasoning": "bbh_exact_match",
                   "knowledge": "mmlu_accuracy", "multilingual": "answer_nll"}
LOWER_IS_BETTER = {"answer_nll"}
# The comparison's references: runs of the protocol's random reference (any seeded method) are labelled
# RANDOM_LABEL; the full pool's runs carry FULL_LABEL, its method's label.
RANDOM_LABEL = "random"
FULL_LABEL = "full"


@dataclass(frozen=True)
class Run:
    """One evaluated subset version and what it cost to select and train."""

    subset_version: str
    method: str  # the comparison label: nait:<capability>, random, full
    n_selected: int
    selection_seconds: float
    selection_tokens: int
    train_seconds: float
    train_tokens: int


def method_label(method: str, capability: str) -> str:
    """``nait:math`` for a subset chosen for one capability; the method alone for a subset chosen for
    every capability by a method that has no per-capability subsets (random, full, length, perplexity)."""
    from nait_pipeline.lib.methods import METHODS

    registered = METHODS.get(method)
    untargeted = registered is not None and (registered.scorer is None or not registered.scorer.targeted)
    return method if untargeted and capability == "all" else f"{method}:{capability}"


def selection_cost(layout: LakeLayout, method: str, score_versions: dict[str, str]) -> tuple[float, int]:
    """(seconds, tokens) a subset's selection took, from the lake's own records: every feature kind the
    method reads prices its pool side (shared by every method and capability that reads it: one store
    serves them all, so each row reports the whole of it) and, for a targeted scorer, the target side of
    the capabilities it scored (``score_versions``' keys, from lineage); then its scoring time. Random
    and full cost nothing."""
    from nait_pipeline.lib.methods import METHODS

    if method not in METHODS:
        raise ValueError(f"no selection cost rule for method {method!r}: it is not registered")
    chosen = METHODS[method]
    scorer = chosen.scorer
    capabilities = sorted(score_versions) if scorer is not None else []
    seconds, tokens = 0.0, 0
    for kind in chosen.kinds:
        kind_seconds, kind_tokens = kind.cost(layout, capabilities, with_targets=scorer is not None and scorer.targeted)
        seconds, tokens = seconds + kind_seconds, tokens + kind_tokens
    if scorer is not None:
        seconds += sum(float(read_metadata(layout.scores(scorer.name, c)).get("seconds", 0.0)) for c in capabilities)
    return seconds, tokens


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def compare(name: str, runs: Sequence[Run], evaluations: Sequence[dict]) -> pa.Table:
    """One row per (method, evaluated capability, metric), with the random and full references.

    ``evaluations`` are rows of the `evaluations` table (subset_version, capability, metric, value, n).
    A method label with several runs (random seeds) is summarised by mean and sample std."""
    by_version = {run.subset_version: run for run in runs}
    missing = sorted(set(by_version) - {e["subset_version"] for e in evaluations})
    if missing:
        raise ValueError(f"no evaluation for subset version(s) {missing}: materialize evaluation for them first")
    values: dict[tuple[str, str, str], list[tuple[float, int, str]]] = defaultdict(list)
    for row in evaluations:
        run = by_version.get(row["subset_version"])
        if run is None:
            continue
        if row["value"] is None or not math.isfinite(row["value"]):
            raise ValueError(f"evaluation of {row['subset_version']} has a non-finite {row['metric']} "
                             f"for {row['capability']}: {row['value']}")
        values[(run.method, row["capability"], row["metric"])].append((row["value"], row["n"], run.subset_version))
    runs_of: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        runs_of[run.method].append(run)

    records = []
    for (method, capability, metric), observed in sorted(values.items()):
        mean, std = _mean_std([v for v, _, _ in observed])
        random_values = [v for v, _, _ in values.get((RANDOM_LABEL, capability, metric), [])]
        random_mean, random_std = _mean_std(random_values) if random_values else (None, None)
        full = values.get((FULL_LABEL, capability, metric))
        method_runs = runs_of[method]
        records.append(dict(
            comparison=name, method=method, eval_capability=capability, metric=metric,
            higher_is_better=metric not in LOWER_IS_BETTER, runs=len(observed), mean=mean, std=std,
            n_items=min(n for _, n, _ in observed), random_mean=random_mean, random_std=random_std,
            full_value=full[0][0] if full else None,
            delta_vs_random=None if random_mean is None else mean - random_mean,
            n_selected=method_runs[0].n_selected,
            selection_seconds=sum(r.selection_seconds for r in method_runs) / len(method_runs),
            selection_tokens=round(sum(r.selection_tokens for r in method_runs) / len(method_runs)),
            train_seconds=sum(r.train_seconds for r in method_runs) / len(method_runs),
            train_tokens=round(sum(r.train_tokens for r in method_runs) / len(method_runs)),
            subset_versions=",".join(sorted(v for _, _, v in observed)),
        ))
    return pa.Table.from_pylist(records, schema=COMPARISON_SCHEMA)


def _method_order(methods: set[str]) -> list[str]:
    references = (RANDOM_LABEL, FULL_LABEL)
    return sorted(m for m in methods if m not in references) + [m for m in references if m in methods]


def _capabilities(rows: list[dict]) -> list[str]:
    """Evaluated capabilities: the built-in ones in their usual order, then the user's by name."""
    present = {r["eval_capability"] for r in rows}
    return [c for c in BUILT_IN if c in present] + sorted(present - set(BUILT_IN))


def report_markdown(table: pa.Table) -> str:
    """The result table a person reads: headline metric and answer NLL per capability for each method
    (random as mean ± std over seeds), then each method's selection and training cost."""
    rows = table.to_pylist()
    cell = {(r["method"], r["eval_capability"], r["metric"]): r for r in rows}
    methods = _method_order({r["method"] for r in rows})
    columns = [(c, m) for c in _capabilities(rows) for m in dict.fromkeys([HEADLINE_METRIC.get(c, "answer_nll"),
                                                                          "answer_nll"])
               if any(k[1:] == (c, m) for k in cell)]

    def fmt(record: dict | None) -> str:
        if record is None:
            return ""
        text = f"{record['mean']:.3f}"
        return text + (f" ± {record['std']:.3f}" if record["std"] is not None else "")

    header = ["method"] + [f"{c} {m}{' ↓' if m in LOWER_IS_BETTER else ''}" for c, m in columns] + \
             ["selected", "selection s", "selection tokens", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        first = next(r for r in rows if r["method"] == method)
        lines.append("| " + " | ".join(
            [method] + [fmt(cell.get((method, c, m))) for c, m in columns] +
            [str(first["n_selected"]), f"{first['selection_seconds']:.0f}", str(first["selection_tokens"]),
             f"{first['train_seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def load_diagnostics(layout: LakeLayout, runs: Sequence[Run]) -> dict[str, dict]:
    """The `subset_diagnostics` row of each run's subset version, where the selection wrote one."""
    out = {}
    for run in runs:
        version, _ = parse_run_key(run.subset_version)
        if version is not None and version not in out and layout.subset_diagnostics(version).exists():
            out[version] = read_table(layout.subset_diagnostics(version)).to_pylist()[0]
    return out


def diagnostics_markdown(runs: Sequence[Run], diagnostics: dict[str, dict], top_sources: int = 3) -> str:
    """Per compared method, its subsets' offline diagnostics (the mean over its distinct subset versions,
    seeds of random): mean length ÷ the pool's, Spearman of its score with length, overlap with the
    longest-k subset, and the sources most enriched over their share of the pool."""
    versions_of: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        version, _ = parse_run_key(run.subset_version)
        if version in diagnostics and version not in versions_of[run.method]:
            versions_of[run.method].append(version)
    if not versions_of:
        return "no subset diagnostics for the compared subsets"

    def mean(values: list) -> str:
        present = [v for v in values if v is not None]
        return f"{sum(present) / len(present):.2f}" if present else "—"

    lines = ["| method | length ÷ pool | ρ(score, length) | overlap longest-k | most enriched sources |",
             "|---|---|---|---|---|"]
    for method in _method_order(set(versions_of)):
        rows = [diagnostics[v] for v in versions_of[method]]
        enrichment: dict[str, float] = defaultdict(float)
        for row in rows:
            for source, value in json.loads(row["enrichment_json"]).items():
                enrichment[source] += value / len(rows)
        top = sorted(enrichment.items(), key=lambda kv: (-kv[1], kv[0]))[:top_sources]
        lines.append(f"| {method} | {mean([r['length_ratio'] for r in rows])} | "
                     f"{mean([r['spearman_length'] for r in rows])} | {mean([r['overlap_longest'] for r in rows])} | "
                     + ", ".join(f"{source} ×{value:.1f}" for source, value in top) + " |")
    return "\n".join(lines)


def plot(table: pa.Table, destination: Path) -> Path:
    """Per capability, answer NLL (top) and the headline metric (bottom): one point per method,
    random's mean ± std as a band, the full pool as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.to_pylist()
    methods = [m for m in _method_order({r["method"] for r in rows}) if m not in (RANDOM_LABEL, FULL_LABEL)]
    shown = _capabilities(rows)
    figure, axes = plt.subplots(2, len(shown), figsize=(3.2 * len(shown), 6), dpi=90, squeeze=False)
    for column, capability in enumerate(shown):
        for row_index, metric in enumerate(["answer_nll", HEADLINE_METRIC.get(capability, "answer_nll")]):
            axis = axes[row_index][column]
            found = {r["method"]: r for r in rows if r["eval_capability"] == capability and r["metric"] == metric}
            if not found or (row_index == 1 and metric == "answer_nll"):
                axis.set_axis_off()
                continue
            reference = next(iter(found.values()))
            if reference["random_mean"] is not None:
                spread = reference["random_std"] or 0.0
                axis.axhspan(reference["random_mean"] - spread, reference["random_mean"] + spread,
                             color="#bbbbbb", alpha=0.5, label="random ± std")
                axis.axhline(reference["random_mean"], color="#777777", linewidth=1)
            if reference["full_value"] is not None:
                axis.axhline(reference["full_value"], color="#c0392b", linestyle="--", linewidth=1, label="full pool")
            xs = [m for m in methods if m in found]
            axis.plot(range(len(xs)), [found[m]["mean"] for m in xs], "o", color="#4f6db8", label="method")
            axis.set_xticks(range(len(xs)), [m.split(":")[-1] for m in xs], rotation=45, fontsize=7)
            axis.set_title(f"{capability}: {metric}{' (lower is better)' if metric in LOWER_IS_BETTER else ''}",
                           fontsize=8)
            axis.tick_params(axis="y", labelsize=7)
    handles, labels = next(((a.get_legend_handles_labels()) for a in axes.flat if a.get_legend_handles_labels()[0]),
                           ([], []))
    if handles:
        figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    with atomic_path(destination, ".png") as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return destination


def run_keys(layout: LakeLayout, versions: Sequence[str]) -> list[str]:
    """The evaluated run keys of ``versions``: each version, its training-order replicates
    (``<version>@order<k>``) and the base model, where their evaluations exist."""
    folder = layout.evaluation("x").parent
    present = {p.stem for p in folder.glob("*.parquet")} if folder.exists() else set()
    keys = []
    for version in versions:
        keys += [version] + sorted(k for k in present if parse_run_key(k)[0] == version and k != version)
    return keys + ([BASE] if BASE in present else [])


def load_runs(layout: LakeLayout, keys: Sequence[str], random_reference: str = RANDOM_LABEL) -> list[Run]:
    """Runs for run keys that were fine-tuned (or the base model), with their selection and training cost.
    Runs of ``random_reference`` (random_stratified on a mixed pool) are labelled ``random``: the reference."""
    loaded = []
    for key in keys:
        version, _ = parse_run_key(key)
        if version is None:
            loaded.append(Run(subset_version=key, method="base", n_selected=0, selection_seconds=0.0,
                              selection_tokens=0, train_seconds=0.0, train_tokens=0))
            continue
        lineage = read_table(layout.lineage(version)).to_pylist()[0]
        train_path = layout.finetune_run(key)
        if not train_path.exists():
            raise FileNotFoundError(f"{key} has no fine-tuning record: materialize finetuned_model[{key}]")
        train = read_table(train_path).to_pylist()[0]
        params = json.loads(lineage["params_json"])
        seconds, tokens = selection_cost(layout, lineage["method"], params.get("score_versions") or {})
        label = RANDOM_LABEL if lineage["method"] == random_reference else method_label(lineage["method"],
                                                                                     lineage["capability"])
        loaded.append(Run(subset_version=key, method=label,
                          n_selected=lineage["n_selected"], selection_seconds=seconds, selection_tokens=tokens,
                          train_seconds=train["seconds"], train_tokens=train["tokens"]))
    return loaded


def load_evaluations(layout: LakeLayout, versions: Sequence[str]) -> list[dict]:
    rows = []
    for version in versions:
        path = layout.evaluation(version)
        if path.exists():
            rows += read_table(path, columns=["subset_version", "capability", "metric", "value", "n"]).to_pylist()
    return rows
