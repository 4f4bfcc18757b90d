"""NAIT: capability directions, pool scores and versioned subsets (methods.md sections 4 and 11)."""

import time

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nait_pipeline.defs.assets.features import read_model_record
from nait_pipeline.defs.metadata import markdown_table, path_value
from nait_pipeline.defs.partitions import capability_partitions, register_subset_versions
from nait_pipeline.defs.plots import bar_plot
from nait_pipeline.defs.resources import PipelineResource
from nait_pipeline.lib import nait, selection
from nait_pipeline.lib.feature_store import read_features
from nait_pipeline.lib.hashing import sha256_json
from nait_pipeline.lib.lake import read_metadata, write_parquet
from nait_pipeline.lib.layout import LakeLayout
from nait_pipeline.lib.settings import CAPABILITIES
from nait_pipeline.lib.subsets import write_subset

METHOD = "nait"
NAIT_CODE_VERSION = "1"


class DirectionConfig(dg.Config):
    drift: str = "R2"
    """R2 (token mean - first token, default) | R1 (last - first token) | R3 (token mean)."""
    min_rows: int = 2
    """Fewest in-domain rows accepted for the per-layer PCA."""


class ScoreConfig(dg.Config):
    aggregation: str = "sum"
    """sum (published: sum over layers of a_l . v_l) | zscore (per-layer z-score first) | cosine."""
    layers: list[int] | None = None
    """1-based layers to sum over; None means every layer."""


class SubsetConfig(dg.Config):
    budget_ratio: float = 0.1
    """Share of the pool to keep (top ceil(r * N))."""
    merge: str = "zsum"
    """All-capability subset: zsum (z-normalized sum) | quota (equal-quota union) | pooled (one
    direction per layer fitted on the pooled in-domain sets)."""
    drift: str = "R2"
    """Drift used by the pooled merge."""


def load_directions(layout: LakeLayout, capability: str) -> tuple[np.ndarray, dict]:
    path = layout.directions(capability)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialize capability_directions[{capability}] first")
    table = pq.read_table(path)
    return np.stack(table.column("direction").to_numpy(zero_copy_only=False)).astype(np.float32), read_metadata(path)


def target_drifts(layout: LakeLayout, capability: str, drift: str) -> tuple[np.ndarray, dict]:
    """The in-domain activation drifts of one capability, and its store's metadata."""
    source = layout.target_activations(capability)
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing: materialize target_activations[{capability}] first")
    vectors = ("layer_mean", "first_token") + (("last_token",) if drift == "R1" else ())
    stored = read_features([source], vectors=vectors)
    drifts = nait.drift(stored.vectors["layer_mean"], stored.vectors["first_token"],
                        stored.vectors.get("last_token"), drift)
    return drifts, stored.metadata


def current_shards(layout: LakeLayout) -> tuple[list[str], str]:
    """The shards of the current pool version, and that version."""
    return layout.kept_shards(), read_metadata(layout.pool_examples)["pool_version"]


def read_pool_features(layout: LakeLayout, vectors=("layer_mean",)):
    shards, pool_version = current_shards(layout)
    paths = [layout.pool_activations(s) for s in shards]
    missing = [s for s, p in zip(shards, paths) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} pool shard(s) not featurized yet, e.g. {missing[:5]}: "
                                "materialize pool_activations for them")
    return read_features(paths, vectors=vectors), pool_version


@dg.asset(
    group_name="nait",
    kinds={"parquet"},
    code_version=NAIT_CODE_VERSION,
    partitions_def=capability_partitions,
    deps=["target_activations"],
)
def capability_directions(context: dg.AssetExecutionContext, config: DirectionConfig,
                          pipeline: PipelineResource) -> dg.MaterializeResult:
    """Per decoder layer, the first principal component of the in-domain activation drift of one
    capability, sign-fixed to point along the mean drift: NAIT's reusable capability feature."""
    layout = LakeLayout(pipeline.settings.lake_dir)
    capability = context.partition_key
    drifts, store_meta = target_drifts(layout, capability, config.drift)
    fitted = nait.fit_directions(drifts, config.min_rows, capability)
    n_layers = fitted.vectors.shape[0]
    table = pa.table({
        "capability": [capability] * n_layers,
        "layer": list(range(1, n_layers + 1)),
        "direction": [row.astype(np.float32) for row in fitted.vectors],
        "explained_variance_ratio": fitted.explained_variance_ratio,
        "sign_flipped": fitted.sign_flipped,
    })
    version = sha256_json({"store": store_meta["store_version"], "drift": config.drift,
                           "code": NAIT_CODE_VERSION})[:16]
    path = write_parquet(table, layout.directions(capability), {
        "directions_version": version, "drift": config.drift, "n_rows": fitted.n_rows,
        "model_id": store_meta["model_id"], "template_hash": store_meta["template_hash"],
        "target_store_version": store_meta["store_version"]})
    plot = bar_plot(fitted.explained_variance_ratio, range(1, n_layers + 1),
                    f"{capability}: PC1 explained variance per layer ({config.drift})", "ratio",
                    path.with_suffix(".png"))
    return dg.MaterializeResult(
        metadata={
            "n_rows": fitted.n_rows,
            "layers": n_layers,
            "drift": config.drift,
            "mean_explained_variance": float(fitted.explained_variance_ratio.mean()),
            "sign_flipped_layers": int(fitted.sign_flipped.sum()),
            "explained_variance_plot": plot,
            "path": path_value(path),
        },
        data_version=dg.DataVersion(version),
    )


@dg.asset(
    group_name="nait",
    kinds={"parquet"},
    code_version=NAIT_CODE_VERSION,
    partitions_def=capability_partitions,
    deps=["capability_directions", dg.AssetDep("pool_activations", partition_mapping=dg.AllPartitionMapping())],
)
def nait_scores(context: dg.AssetExecutionContext, config: ScoreConfig,
                pipeline: PipelineResource) -> dg.MaterializeResult:
    """NAIT score of every pool example for one capability: the sum over layers of the projection of
    its token-mean activation on the capability direction. Uses the stored pool activations only:
    scoring a new capability runs no model over the pool."""
    layout = LakeLayout(pipeline.settings.lake_dir)
    capability = context.partition_key
    started = time.perf_counter()
    directions, direction_meta = load_directions(layout, capability)
    pool, pool_version = read_pool_features(layout)
    if pool.metadata["model_id"] != direction_meta["model_id"]:
        raise ValueError(f"pool activations come from {pool.metadata['model_id']} but the {capability} directions "
                         f"from {direction_meta['model_id']}: re-materialize one of them with the same model")
    read_seconds = time.perf_counter() - started
    layer_mean = pool.vectors["layer_mean"]
    projections = nait.layer_projections(layer_mean, directions)
    norms = np.linalg.norm(layer_mean, axis=2) if config.aggregation == "cosine" else None
    scores = nait.aggregate(projections, config.aggregation, config.layers, norms)
    nait.require_finite(scores, pool.ids)
    score_seconds = time.perf_counter() - started - read_seconds
    params = {"aggregation": config.aggregation, "layers": config.layers}
    version = sha256_json({"directions": direction_meta["directions_version"], "pool": pool_version, **params})[:16]
    n = len(pool.ids)
    table = pa.table({
        "method": [METHOD] * n, "capability": [capability] * n, "example_id": pool.ids, "score": scores,
        "score_version": [version] * n, "pool_version": [pool_version] * n,
        "model_id": [pool.metadata["model_id"]] * n,
        "layer_projections": list(projections.astype(np.float32)),
    })
    path = write_parquet(table, layout.scores(METHOD, capability), {
        "score_version": version, "params": params, "directions_version": direction_meta["directions_version"],
        "template_hash": direction_meta["template_hash"], "pool_version": pool_version,
        "seconds": round(read_seconds + score_seconds, 3)})
    order = selection.rank_order(pool.ids, scores)
    top = table.take(order[:10]).select(["example_id", "score"])
    return dg.MaterializeResult(
        metadata={
            "row_count": n,
            "score_version": version,
            "read_seconds": round(read_seconds, 3),
            "score_seconds": round(score_seconds, 3),
            "score_mean": float(scores.mean()),
            "score_std": float(scores.std()),
            "top_10": markdown_table(top, 10),
            "path": path_value(path),
        },
        data_version=dg.DataVersion(version),
    )


def _pooled_scores(layout: LakeLayout, drift: str) -> tuple[np.ndarray, list[str]]:
    """Merge (b): one direction per layer fitted on all capabilities' in-domain sets together."""
    drifts = [target_drifts(layout, capability, drift)[0] for capability in CAPABILITIES]
    fitted = nait.fit_directions(np.concatenate(drifts), capability="all (pooled)")
    pool, _ = read_pool_features(layout)
    return nait.aggregate(nait.layer_projections(pool.vectors["layer_mean"], fitted.vectors)), pool.ids


@dg.asset(
    group_name="nait",
    kinds={"parquet"},
    code_version=NAIT_CODE_VERSION,
    deps=[dg.AssetDep("nait_scores", partition_mapping=dg.AllPartitionMapping())],
    check_specs=[dg.AssetCheckSpec("budget_respected", asset="nait_subsets", blocking=True)],
)
def nait_subsets(context: dg.AssetExecutionContext, config: SubsetConfig,
                 pipeline: PipelineResource) -> dg.MaterializeResult:
    """Top-r subsets: one per capability and one for all capabilities (z-normalized score sum by
    default), each a new `subset_version` in `subsets` with its `subset_lineage` (pool version,
    model, template, method, parameters, hash of the selected ids). Ties are broken by id."""
    layout = LakeLayout(pipeline.settings.lake_dir)
    model = read_model_record(layout)
    per_capability: dict[str, np.ndarray] = {}
    score_versions: dict[str, str] = {}
    score_params: dict[str, dict] = {}
    ids: list[str] | None = None
    pool_version = None
    for capability in CAPABILITIES:
        path = layout.scores(METHOD, capability)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: materialize nait_scores[{capability}] first")
        table = pq.read_table(path, columns=["example_id", "score"])
        meta = read_metadata(path)
        if ids is None:
            ids, pool_version = table.column("example_id").to_pylist(), meta["pool_version"]
        elif table.column("example_id").to_pylist() != ids or meta["pool_version"] != pool_version:
            raise ValueError(f"nait_scores[{capability}] was computed on another pool version: re-materialize it")
        per_capability[capability] = table.column("score").to_numpy()
        score_versions[capability] = meta["score_version"]
        score_params[capability] = meta["params"]
    assert ids is not None
    k = selection.budget(len(ids), config.budget_ratio)
    written = []
    for capability, scores in per_capability.items():
        written.append(write_subset(
            layout, method=METHOD, capability=capability, ids=ids, scores=scores,
            chosen=selection.top_k(ids, scores, k), budget_ratio=config.budget_ratio,
            params={"budget_ratio": config.budget_ratio, **score_params[capability],
                    "score_versions": {capability: score_versions[capability]}},
            pool_version=pool_version, model=model))

    # Scoring parameters shared by every capability are recorded flat, differing ones per capability.
    shared = score_params[CAPABILITIES[0]] if all(p == score_params[CAPABILITIES[0]] for p in score_params.values()) \
        else {"score_params": score_params}
    merge_params = {"budget_ratio": config.budget_ratio, "merge": config.merge, **shared,
                    "score_versions": score_versions}
    if config.merge == "zsum":
        merged = selection.zsum_scores(per_capability)
        chosen = selection.top_k(ids, merged, k)
    elif config.merge == "quota":
        merged = selection.zsum_scores(per_capability)
        chosen = selection.equal_quota(ids, per_capability, k)
    elif config.merge == "pooled":
        merged, pooled_ids = _pooled_scores(layout, config.drift)
        if pooled_ids != ids:
            raise ValueError("pool activations changed since nait_scores ran: re-materialize nait_scores")
        merge_params["drift"] = config.drift
        chosen = selection.top_k(ids, merged, k)
    else:
        raise ValueError(f"merge must be one of {selection.MERGES}, got {config.merge!r}")
    written.append(write_subset(layout, method=METHOD, capability="all", ids=ids, scores=merged, chosen=chosen,
                                budget_ratio=config.budget_ratio, params=merge_params, pool_version=pool_version,
                                model=model))

    register_subset_versions(context.instance, [w["subset_version"] for w in written])
    names = [w["capability"] for w in written]
    overlap = {a["capability"]: {b["capability"]: round(len(a["ids"] & b["ids"]) / max(1, len(a["ids"] | b["ids"])), 3)
                                 for b in written} for a in written}
    summary = pa.Table.from_pylist([{k: v for k, v in w.items() if k != "ids"} for w in written])
    return dg.MaterializeResult(
        metadata={
            "budget": k,
            "n_pool": len(ids),
            "subsets": markdown_table(summary, len(written)),
            "jaccard_overlap": dg.MetadataValue.json(overlap),
            "subset_versions": dg.MetadataValue.json({w["capability"]: w["subset_version"] for w in written}),
        },
        data_version=dg.DataVersion(sha256_json([w["subset_version"] for w in written])[:16]),
        check_results=[dg.AssetCheckResult(
            check_name="budget_respected",
            passed=all(w["n_selected"] == k for w in written),
            metadata={name: w["n_selected"] for name, w in zip(names, written)},
        )],
    )
