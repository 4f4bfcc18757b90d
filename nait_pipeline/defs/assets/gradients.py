"""The gradient feature kind LESS, BIDS and G2IS share: a LoRA warmup on a seeded share of the pool, the
projected per-example gradients of pool shards and target sets at each warmup checkpoint, and G2IS's
kNN graph over the pool's gradients. Scores and subsets come from the method registry."""

import time
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa

from nait_pipeline.defs.assets.features import SHARDS_PER_RUN
from nait_pipeline.defs.config import config_class, to_params
from nait_pipeline.defs.metadata import markdown_table, path_value
from nait_pipeline.defs.partitions import capability_partitions, pool_shard_partitions
from nait_pipeline.defs.plots import bar_plot
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.execution.k8s import PodShape, step_pod_tags
from nait_pipeline.lib.execution.shard_tasks import GRADIENTS, ShardTask, verify_outcome
from nait_pipeline.lib.features import gradients as gr
from nait_pipeline.lib.features.featurize import resolve_device
from nait_pipeline.lib.features.forward import target_rows
from nait_pipeline.lib.features.gradient_store import featurize_checkpoints, read_gradient_pool
from nait_pipeline.lib.io.hashing import sha256_json, sha256_lines
from nait_pipeline.lib.io.lake import read_metadata, read_table, write_json
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.progress import Progress, to_console
from nait_pipeline.lib.io.pool_view import EXAMPLE_COLUMNS
from nait_pipeline.lib.methods.gradients import g2is_math
from nait_pipeline.lib.methods.gradients.gradient_pool import warmup_rows

WarmupAdapterConfig = config_class("WarmupAdapterConfig", gr.WarmupConfig)


def _console_progress(label: str, context=None):
    meter = Progress(label, 0)

    def report(done: int, total: int) -> None:
        meter.total = total
        line = meter.update(done)
        to_console(line, final=done == total)
        if done == total and context is not None:
            context.log.info(line)
    return report


@dg.asset(
    group_name="features",
    kinds={"torch"},
    code_version=gr.GRADIENT_VERSION,
    deps=["it_pool", "base_model"],
    pool="cpu_heavy",
)
def warmup_adapter(context: dg.AssetExecutionContext, config: WarmupAdapterConfig,
                   pipeline: LakeResource) -> dg.MaterializeResult:
    """LESS's warmup: LoRA training on a seeded share of the pool (default 5 %), one checkpoint per epoch
    with the adapter, Adam's moments and the epoch's mean learning rate (the checkpoint weights of the
    influence sum). Resumes from the newest finished epoch; a run with the same rows and config is reused."""
    layout = pipeline.layout
    params = to_params(gr.WarmupConfig, config)
    pool = pipeline.pool().kept(["example_id", *EXAMPLE_COLUMNS, "content_hash"]).sort_by("example_id")
    all_ids = pool.column("example_id").to_pylist()
    rows = pool.take(warmup_rows(all_ids, params)).to_pylist()
    model = pipeline.base_model()
    identity = {"gradient_version": gr.GRADIENT_VERSION, "model_id": model.model_id,
                "template_hash": model.template_hash, "config": params.as_dict(),
                "rows": sha256_lines(f"{r['example_id']}\t{r['content_hash']}" for r in rows)[:16]}
    adapter_version = sha256_json(identity)[:16]
    started = time.perf_counter()
    checkpoints = gr.warmup(Path(model.path), rows, params, layout.warmup_run, identity,
                            progress=_console_progress("warmup steps", context), device=resolve_device("auto"))
    weights = gr.checkpoint_weights(checkpoints)
    write_json({"adapter_version": adapter_version, "model_id": model.model_id, "model_path": model.path,
                "template_hash": model.template_hash, "config": params.as_dict(), "warmup_rows": len(rows),
                "checkpoints": [{"epoch": c.epoch, "mean_lr": c.mean_lr} for c in checkpoints],
                "weights": weights}, layout.warmup_record)
    return dg.MaterializeResult(
        metadata={"warmup_rows": len(rows), "pool_rows": len(all_ids), "epochs": params.epochs,
                  "lora_r": params.lora_r, "adapter_version": adapter_version,
                  "checkpoint_mean_lr": dg.MetadataValue.json([c.mean_lr for c in checkpoints]),
                  "checkpoint_weights": dg.MetadataValue.json([round(w, 6) for w in weights]),
                  "seconds": round(time.perf_counter() - started, 1), "path": path_value(layout.warmup_run)},
        data_version=dg.DataVersion(adapter_version),
    )


class GradientFeaturizerConfig(dg.Config):
    dim: int = 1024
    """Projected width (official 8,192). 1,024 float32 values per row and checkpoint keep a 1 M-row pool's
    4 checkpoints at 16 GB; the dimension and seed must match between pool and targets (refused otherwise)."""
    seed: int = 0
    """Rademacher projection seed (official: 0)."""
    max_length: int = 512
    batch_tokens: int = 4096
    """Padded tokens per forward+backward batch."""
    batch_rows: int = 0
    """Rows per backward; 0: 16 on a GPU, 4 on a CPU (compute-bound there: 16 rows measured 2x slower)."""
    device: str = "auto"


def _featurize(context, layout: LakeLayout, rows: list[dict], ids: list[str], input_version: str,
               config: GradientFeaturizerConfig, preconditioning: str, destination) -> list[dict]:
    return featurize_checkpoints(layout, rows, ids, input_version, preconditioning, destination, dim=config.dim,
                                 seed=config.seed, max_length=config.max_length, batch_tokens=config.batch_tokens,
                                 batch_rows=config.batch_rows or None, device=resolve_device(config.device),
                                 progress=lambda label: _console_progress(label, context))


def _result(per_checkpoint: list[dict], paths: list, extra: dict) -> dg.MaterializeResult:
    versions = [read_metadata(p)["store_version"] for p in paths]
    return dg.MaterializeResult(
        metadata={"checkpoints": markdown_table(pa.Table.from_pylist(per_checkpoint), len(per_checkpoint)),
                  "row_count": per_checkpoint[0]["rows"], "recomputed": sum(not r["reused"] for r in per_checkpoint),
                  "path": path_value(paths[-1].parent.parent), **extra},
        data_version=dg.DataVersion(sha256_json(versions)[:16]))


@dg.asset(
    group_name="features",
    kinds={"torch", "parquet"},
    code_version=gr.GRADIENT_VERSION,
    partitions_def=pool_shard_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SHARDS_PER_RUN),
    deps=["it_pool", "warmup_adapter"],
    pool="cpu_heavy",
    op_tags=step_pod_tags(PodShape(gpus=1)),  # a step pod on Kubernetes: one GPU
)
def pool_gradients(context: dg.AssetExecutionContext, config: GradientFeaturizerConfig,
                   pipeline: LakeResource) -> dg.MaterializeResult:
    """Per-example LoRA gradients of a pool shard's rows at every warmup checkpoint, Adam-preconditioned with
    the checkpoint's moments, cast to float16, projected (seeded Rademacher) and L2-normalised. One file per
    shard and checkpoint; a file that matches (rows, adapter, projection) is kept, so a killed run resumes.
    Shards run on the configured executor (this process or Ray workers), each verified before it is recorded."""
    layout, settings, executor = pipeline.layout, pipeline.settings, pipeline.shard_executor()
    shards = context.partition_keys
    with executor.start(settings, len(shards), context.log.info) as workers:
        device = workers.device(config.device)
        params = {"dim": config.dim, "seed": config.seed, "max_length": config.max_length,
                  "batch_tokens": config.batch_tokens, "batch_rows": config.batch_rows or None, "device": device}
        outcomes = workers.run([ShardTask(GRADIENTS, shard, params) for shard in shards],
                               lambda task, outcome: verify_outcome(settings, task, outcome))
    paths = [layout.pool_gradients(o.shard, r["checkpoint"]) for o in outcomes for r in o.stats["checkpoints"]]
    rows = [{"shard": o.shard, "worker": o.worker, **r} for o in outcomes for r in o.stats["checkpoints"]]
    return _result(rows, paths, {"shards": len(shards), "executor": executor.describe(), "device": device})


class TargetGradientConfig(GradientFeaturizerConfig):
    rows: int = 64
    """Target rows per capability, spread over its tasks (LESS uses few-shot sets: MMLU 285, BBH 81,
    TyDiQA 9); 0: every row of the target set. Each row costs a backward pass per checkpoint."""


@dg.asset(
    group_name="features",
    kinds={"torch", "parquet"},
    code_version=gr.GRADIENT_VERSION,
    partitions_def=capability_partitions,
    deps=["target_sets", "warmup_adapter"],
    pool="cpu_heavy",
)
def target_gradients(context: dg.AssetExecutionContext, config: TargetGradientConfig,
                     pipeline: LakeResource) -> dg.MaterializeResult:
    """Plain (SGD) LoRA gradients of a capability's target rows (a few per task) at every warmup checkpoint,
    projected like the pool's and normalised. A target row without a response token is an error naming it."""
    layout = pipeline.layout
    capability = context.partition_key
    everything = read_table(layout.target_selection(capability)).to_pylist()
    targets = [everything[i] for i in gr.few_shot_rows([r["task"] for r in everything],
                                                        [r["example_id"] for r in everything], config.rows)]
    if len(targets) < 2:
        raise ValueError(f"{capability} has {len(targets)} target row(s): the gradient methods need at least 2 "
                         "(BIDS z-scores per column, G2IS takes a PCA)")
    rows, ids, version = target_rows(targets)
    done = _featurize(context, layout, rows, ids, version, config, "sgd",
                      lambda epoch: layout.target_gradients(capability, epoch))
    tasks = sorted({r["task"] for r in targets})
    return _result(done, [layout.target_gradients(capability, r["checkpoint"]) for r in done],
                   {"subtasks": len(tasks)})


class GradientGraphConfig(dg.Config):
    k: int = 256
    """Neighbours per row (G2IS leaves it open; 256 by default)."""
    kind: str = "exact"
    """exact (blocked matrix products, O(N^2 D)) | faiss (an inverted-file index, ~N^1.5; needs faiss-cpu) for
    large pools."""


@dg.asset(
    group_name="features",
    kinds={"numpy"},
    code_version="1",
    deps=[dg.AssetDep("pool_gradients", partition_mapping=dg.AllPartitionMapping())],
    pool="cpu_heavy",
)
def gradient_graph(context: dg.AssetExecutionContext, config: GradientGraphConfig,
                   pipeline: LakeResource) -> dg.MaterializeResult:
    """G2IS's similarity graph: each pool row's k most similar rows by the cosine of their combined
    (learning-rate-weighted, all checkpoints) gradient features, most similar first, self excluded."""
    layout = pipeline.layout
    pool, _ = read_gradient_pool(layout)
    features = pool.combined()
    started = time.perf_counter()
    if config.kind == "exact":
        neighbours = g2is_math.knn_graph(features, config.k, progress=_console_progress("kNN graph", context))
    elif config.kind == "faiss":
        neighbours = g2is_math.knn_graph_faiss(features, config.k)
    else:
        raise ValueError(f"kind must be 'exact' or 'faiss', got {config.kind!r}")
    seconds = time.perf_counter() - started
    from nait_pipeline.lib.io.lake import atomic_path

    with atomic_path(layout.gradient_graph, ".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, neighbours=neighbours, pool_ids=np.array(pool.ids),
                     features_version=np.array(pool.metadata["features_version"]), kind=np.array(config.kind))
    version = sha256_json([pool.metadata["features_version"], config.k, config.kind])[:16]
    first = neighbours[:, 0]
    found = first >= 0  # an approximate search may find no neighbour for a row
    self_similarity = np.einsum("ij,ij->i", features[found], features[first[found]])
    return dg.MaterializeResult(
        metadata={"rows": len(pool.ids), "k": int(neighbours.shape[1]), "kind": config.kind,
                  "rows_without_a_neighbour": int((~found).sum()),
                  "seconds": round(seconds, 2), "path": path_value(layout.gradient_graph),
                  "nearest_cosine_mean": float(self_similarity.mean()),
                  "nearest_cosine": bar_plot(np.quantile(self_similarity, [0.1, 0.25, 0.5, 0.75, 0.9]),
                                             ["p10", "p25", "p50", "p75", "p90"],
                                             "cosine with the nearest neighbour", "cosine",
                                             layout.gradient_graph.with_suffix(".png"))},
        data_version=dg.DataVersion(version))
