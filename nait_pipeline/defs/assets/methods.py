"""Every registered method becomes assets: one `<scorer>_scores` asset per scorer (partitioned by
capability when it needs an in-domain set) and one `<method>_subsets` asset per method, with the same
lineage, checks, data versions and metadata for all of them. Nothing here is method-specific: the
methods live in ``lib/methods`` and are listed in its registry."""

import dagster as dg
import numpy as np
import pyarrow as pa

from nait_pipeline.defs.config import config_class, to_params
from nait_pipeline.defs.metadata import markdown_table, path_value
from nait_pipeline.defs.partitions import capability_partitions, register_subset_versions, selectable_capabilities
from nait_pipeline.defs.plots import bar_plot, contribution_heatmap, heatmap_plot, histogram_plot
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.data.decontamination import ASSET as CONTAMINATION_ASSET
from nait_pipeline.lib.evaluation.publish import build_card
from nait_pipeline.lib.features.kinds import SHARD
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import read_table, write_parquet
from nait_pipeline.lib.io.pool_view import PoolView
from nait_pipeline.lib.methods import ALL, METHODS, Method, Scorer, scorers
from nait_pipeline.lib.methods.base import SelectionOptions
from nait_pipeline.lib.methods.run import budget_of, expected_sizes, run_selection, score_capability
from nait_pipeline.lib.selection import diff
from nait_pipeline.lib.selection.near_duplicates import ASSET as NEAR_DUPLICATES_ASSET
from nait_pipeline.lib.selection import policies as selection


def pool_feature_deps(kinds) -> list[dg.AssetDep]:
    """The assets of each kind's pool side; a score or a policy reads every shard of a shard-partitioned one."""
    return [dg.AssetDep(asset.name, partition_mapping=dg.AllPartitionMapping() if asset.partitioning == SHARD else None)
            for kind in kinds for asset in kind.pool_assets]


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def build_scores_asset(scorer: Scorer) -> dg.AssetsDefinition:
    Config = config_class(f"{_camel(scorer.name)}ScoreConfig", scorer.params)  # noqa: N806
    deps = [*scorer.target_asset_names, *pool_feature_deps(scorer.kinds)]

    @dg.asset(
        name=f"{scorer.name}_scores",
        group_name="scores",
        kinds={"parquet"},
        code_version=scorer.code_version,
        partitions_def=capability_partitions if scorer.targeted else None,
        deps=deps,
        description=scorer.description + (" Reads the stored pool features only: no model runs over the pool."),
    )
    def _scores(context: dg.AssetExecutionContext, config: Config, pipeline: LakeResource) -> dg.MaterializeResult:
        layout = pipeline.layout
        capability = context.partition_key if scorer.targeted else ALL
        result = score_capability(layout, scorer, capability, to_params(scorer.params, config))
        scores = result.table.column("score").drop_null().to_numpy()
        path = layout.scores(scorer.name, capability)
        with_score = result.table.filter(result.table.column("score").is_valid())  # NULL: no score defined
        order = selection.rank_order(with_score.column("example_id").to_pylist(),
                                     with_score.column("score").to_numpy())
        return dg.MaterializeResult(
            metadata={
                "row_count": len(result.table),
                "score_version": result.version,
                "read_seconds": round(result.read_seconds, 3),
                "score_seconds": round(result.score_seconds, 3),
                "score_mean": float(scores.mean()) if len(scores) else float("nan"),
                "score_std": float(scores.std()) if len(scores) else float("nan"),
                "top_10": markdown_table(_with_instructions(pipeline.pool(), with_score.take(order[:10])), 10),
                "histogram": histogram_plot(scores, f"{scorer.name} scores ({capability})", "score",
                                            path.with_suffix(".png")),
                "path": path_value(path),
                **{k: v for k, v in result.notes.items() if isinstance(v, (int, float, str))},
                **{k: dg.MetadataValue.json(v) for k, v in result.notes.items() if isinstance(v, list)},
                # Per-layer notes (NAIT-C's held-out AUC and layer weights) as bar plots, layer 1 first.
                **{f"{k}_plot": bar_plot(np.nan_to_num(np.asarray(v, float)), range(1, len(v) + 1),
                                         f"{scorer.name} {k.replace('_', ' ')} per layer ({capability})", k,
                                         path.with_name(f"{path.stem}_{k}.png"))
                   for k, v in result.notes.items() if k.startswith("layer_") and isinstance(v, list)},
                **({"top_10_layer_contributions": _contribution_plot(result.table, order[:10], scorer.name,
                                                                     capability, path)}
                   if "layer_contributions" in result.table.column_names else {}),
            },
            data_version=dg.DataVersion(result.version),
        )

    return _scores


def _with_instructions(pool: PoolView, top: pa.Table) -> pa.Table:
    """The top rows' ids and scores beside their instruction: what a person checks first."""
    ids = top.column("example_id").to_pylist()
    return pa.table({"example_id": ids, "score": top.column("score"), "instruction": pool.instructions(ids)})


def _contribution_plot(table: pa.Table, rows, scorer: str, capability: str, path) -> dg.MarkdownMetadataValue:
    """Per-layer contributions of the top-ranked rows: which layers put each of them on top."""
    with_score = table.filter(table.column("score").is_valid())
    top = with_score.take(rows)
    matrix = np.stack(top.column("layer_contributions").to_numpy(zero_copy_only=False))
    scale = np.abs(matrix).max() or 1.0
    return contribution_heatmap(matrix / scale, top.column("example_id").to_pylist(),
                                f"{scorer}: per-layer contributions of the top rows ({capability})",
                                path.with_name(f"{path.stem}_contributions.png"))


def _card_subset(written: list[dict]) -> str:
    return next((w["subset_version"] for w in written if w["capability"] == ALL), written[0]["subset_version"])


def _overlap(written: list[dict]) -> dict:
    label = lambda w: w["capability"] + (f"/{w['slot']}" if w["slot"] else "")  # noqa: E731
    return {label(a): {label(b): round(len(a["ids"] & b["ids"]) / max(1, len(a["ids"] | b["ids"])), 3)
                       for b in written} for a in written}


def build_subsets_asset(method: Method) -> dg.AssetsDefinition:
    Config = config_class(f"{_camel(method.name)}SubsetConfig", method.params, SelectionOptions)  # noqa: N806
    scorer = method.scorer
    # Every method's candidates leave out contaminated rows by default: the check is upstream of each.
    if scorer is None:
        deps = ["it_pool", "base_model", CONTAMINATION_ASSET, NEAR_DUPLICATES_ASSET,
                *pool_feature_deps(method.policy_reads)]
    else:
        deps = [dg.AssetDep(f"{scorer.name}_scores",
                            partition_mapping=dg.AllPartitionMapping() if scorer.targeted else None),
                CONTAMINATION_ASSET, NEAR_DUPLICATES_ASSET, *pool_feature_deps(method.policy_reads)]
    name = f"{method.name}_subsets"

    @dg.asset(
        name=name,
        group_name="subsets",
        kinds={"parquet"},
        code_version=method.code_version,
        deps=deps,
        check_specs=[dg.AssetCheckSpec("budget_respected", asset=name, blocking=True),
                     dg.AssetCheckSpec("not_a_length_selector", asset=name,
                                       description="every subset's mean length within 0.8-1.25x the pool's and "
                                                   "|Spearman(score, length)| <= 0.3 (warning)"),
                     dg.AssetCheckSpec("budget_filled", asset=name,
                                       description="every subset holds its whole budget (warning: G2IS's walk can "
                                                   "stop short under its constraints)")],
        description=f"{method.description} Policy: {method.policy}. Each subset is a version in `subsets` "
                    "with its `subset_lineage`; the versions it holds now are in `current_subsets`.",
    )
    def _subsets(context: dg.AssetExecutionContext, config: Config, pipeline: LakeResource) -> dg.MaterializeResult:
        layout = pipeline.layout
        params = to_params(method.params, config)
        capabilities = selectable_capabilities(context.instance)
        written = run_selection(layout, method, params, capabilities, pipeline.base_model(),
                                to_params(SelectionOptions, config))
        register_subset_versions(context.instance, [w["subset_version"] for w in written])
        sizes = budget_of(written)
        n_pool = written[0]["n_pool"]
        shortfall = {key: w["shortfall"] for key, w in zip(sizes, written) if w["shortfall"]}
        expected = expected_sizes(written)
        summary = pa.Table.from_pylist([{k: v for k, v in w.items() if k not in ("ids", "diagnostics")}
                                        for w in written])
        diagnostics = pa.Table.from_pylist([{"subset": key, **{k: v for k, v in w["diagnostics"].as_row().items()
                                                               if k != "composition_json"}}
                                            for key, w in zip(sizes, written)])
        length_selectors = [key for key, w in zip(sizes, written) if not w["diagnostics"].passes_length_gates()]
        overlap = _overlap(written)
        return dg.MaterializeResult(
            metadata={
                "n_pool": n_pool,
                "subsets": markdown_table(summary, len(written)),
                "diagnostics": markdown_table(diagnostics, len(written)),
                "jaccard_overlap": dg.MetadataValue.json(overlap),
                **({"overlap_plot": heatmap_plot([list(row.values()) for row in overlap.values()], list(overlap),
                                                 f"{method.name}: Jaccard overlap of its subsets",
                                                 layout.root / "subsets" / "_plots" / f"{method.name}_overlap.png")}
                   if len(written) > 1 else {}),
                "subset_versions": dg.MetadataValue.json(
                    {key: w["subset_version"] for key, w in zip(sizes, written)}),
                # What `nait-pipeline publish` writes as the README of the first subset (`all` where there is one).
                "dataset_card": dg.MetadataValue.md(build_card(layout, _card_subset(written), pipeline.settings.licenses)[1]),
            },
            data_version=dg.DataVersion(sha256_json([w["subset_version"] for w in written])[:16]),
            check_results=[dg.AssetCheckResult(
                check_name="budget_respected",
                passed=all(sizes[key] == expected[key] for key in sizes),
                metadata={key: f"{sizes[key]} of {expected[key]}" for key in sizes},
            ), dg.AssetCheckResult(
                check_name="budget_filled",
                passed=not shortfall,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"shortfall": dg.MetadataValue.json(shortfall)},
            ), dg.AssetCheckResult(
                check_name="not_a_length_selector",
                passed=not length_selectors,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"length_selectors": dg.MetadataValue.json(length_selectors)},
            )],
        )

    return _subsets


score_assets = [build_scores_asset(s) for s in scorers().values()]
subset_assets = [build_subsets_asset(m) for m in METHODS.values()]


@dg.asset(
    group_name="subsets",
    kinds={"parquet"},
    code_version="1",
    deps=[f"{name}_subsets" for name in METHODS],
)
def subset_diffs(context: dg.AssetExecutionContext, pipeline: LakeResource) -> dg.MaterializeResult:
    """For every slot whose last selection replaced an earlier subset version: the rows added, removed
    and kept (with rank changes and changed texts), and why (the pool version, model, template,
    parameters or code that differ). Rows land in the `subset_diffs` view; the named queries
    `subset_changes` and `subset_diff` answer the same questions for any two versions."""
    layout = pipeline.layout
    current = []
    for path in sorted(layout.current_subsets_dir.glob("*.parquet")) if layout.current_subsets_dir.exists() else []:
        if not path.name.startswith("_"):
            current += read_table(path).to_pylist()
    summaries = []
    for slot in diff.changed_slots(current):
        old, new = slot["previous_version"], slot["subset_version"]
        rows = diff.diff_rows(layout, old, new)
        write_parquet(rows, layout.subset_diff(new, old))
        summary = diff.explain(layout, old, new, rows)
        moved = sum(1 for change in rows.column("rank_change").to_pylist() if change)
        summaries.append({"method": slot["method"], "slot": slot["capability"] + (f"/{slot['slot']}" if slot["slot"] else ""),
                          "old": old, "new": new, "added": summary["added"], "removed": summary["removed"],
                          "moved": moved, "new_text": summary["kept_with_new_text"], "why": diff.why_line(summary)})
    if summaries:
        context.log.info(f"{len(summaries)} slot(s) changed since their previous selection")
    table = pa.Table.from_pylist(summaries) if summaries else pa.table({"method": pa.array([], pa.string())})
    return dg.MaterializeResult(
        metadata={"changed_slots": len(summaries),
                  "changes": markdown_table(table, 50) if summaries else dg.MetadataValue.md("no subset changed"),
                  },
        data_version=dg.DataVersion(sha256_json([(s["old"], s["new"]) for s in summaries])[:16]),
    )
