"""Activation stores: one forward pass per example over pool shards and target sets."""

import warnings
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from nait_pipeline.defs.metadata import markdown_table, path_value
from nait_pipeline.defs.partitions import capability_partitions, pool_shard_partitions
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.execution.k8s import PodShape, step_pod_tags
from nait_pipeline.lib.execution.shard_tasks import FORWARD, ShardOutcome, ShardTask, printing_progress, verify_outcome
from nait_pipeline.lib.features import featurize as fz
from nait_pipeline.lib.features import capacity, forward
from nait_pipeline.lib.features.reduction import StoreReduction
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.models.model_io import ModelInfo
from nait_pipeline.lib.io.lake import read_table


class FeaturizerConfig(dg.Config):
    max_length: int = 512
    """Tokens per example; longer examples are truncated (and marked `truncated`)."""
    dtype: str = "auto"
    """auto | float32 | bfloat16: auto picks bf16 only where the hardware computes it natively."""
    device: str = "auto"
    """auto | cpu | cuda."""
    batch_tokens: int = 2048
    """Padded tokens per forward batch."""
    hidden_states: str = fz.HF_OUTPUT
    """hf_output (HF output_hidden_states; last layer after the final norm) | prenorm_last."""

    def spec(self, keep_last_token: bool, reduction: StoreReduction, device: str | None = None) -> fz.FeaturizerSpec:
        """The featurizer's spec on ``device`` (default: this process's); its dtype follows the device."""
        return fz.FeaturizerSpec(max_length=self.max_length,
                                 dtype=fz.resolve_dtype(self.dtype, device or fz.resolve_device(self.device)),
                                 batch_tokens=self.batch_tokens, keep_last_token=keep_last_token,
                                 hidden_states=self.hidden_states, reduction=reduction)


def featurize_rows(context, model: ModelInfo, rows: list[dict], ids: list[str], config: FeaturizerConfig,
                   keep_last_token: bool, destination: Path, input_version: str,
                   reduction: StoreReduction) -> dg.MaterializeResult:
    """Featurize ``rows`` into ``destination`` unless an identical store is already there."""
    spec = config.spec(keep_last_token, reduction)
    run = forward.featurize_into(destination, model, rows, ids, spec, input_version,
                                 lambda: forward.cached_model(model.path, spec.dtype, fz.resolve_device(config.device)),
                                 printing_progress(f"featurizing {destination.stem}", context.log.info))
    if run.reused:
        context.log.info(f"{destination.name} is up to date (store version {run.version}); not recomputed")
    return _result(run.table, destination, run.version, {"reused": run.reused, **run.stats})


def _result(table: pa.Table, path: Path, version: str, extra: dict) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "row_count": len(table),
            "tokens": int(pc.sum(table["n_tokens"]).as_py() or 0),
            "truncated": int(pc.sum(table["truncated"]).as_py() or 0),
            "mean_response_loss": float(pc.mean(table["response_loss"]).as_py() or float("nan")),
            "store_version": version,
            "path": path_value(path),
            "bytes": path.stat().st_size,
            "bytes_per_row": round(path.stat().st_size / max(1, len(table))),
            "preview": markdown_table(table),
            **{k: v for k, v in extra.items() if isinstance(v, (int, float, str, bool))},
        },
        data_version=dg.DataVersion(version),
    )


# Dagster marks `backfill_policy` beta; it is the documented way to batch partitions per run.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)

# A backfill of a whole pool runs up to this many shards per run: one process, one model load.
SHARDS_PER_RUN = 8


@dg.asset(
    group_name="features",
    kinds={"torch", "parquet"},
    code_version=fz.FEATURIZER_VERSION,
    partitions_def=pool_shard_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SHARDS_PER_RUN),
    deps=["it_pool", "base_model"],
    pool="cpu_heavy",
    op_tags=step_pod_tags(PodShape(gpus=1)),  # a step pod on Kubernetes: one GPU
)
def pool_activations(context: dg.AssetExecutionContext, config: FeaturizerConfig,
                     pipeline: LakeResource) -> dg.MaterializeResult:
    """Forward features of pool shards: per decoder layer the token mean of the residual stream
    and the first-token state, plus the RDS+ position-weighted last-layer mean and the response loss.

    A shard whose store already matches (same rows, model, template and featurizer) is not recomputed,
    so a killed backfill resumes where it stopped; new pool data only adds shards. A backfill runs up to
    `SHARDS_PER_RUN` shards per run; Dagster then records one data version for the whole range (the hash
    of its shards' store versions), so a change in any shard of a range marks the range changed. The shards
    run on the configured executor (settings `executor`: this process, or Ray workers that keep the model
    across shards); every shard's file is re-read and verified here before its version is recorded.
    """
    layout, model = pipeline.layout, pipeline.base_model()
    reduction = pipeline.store_reduction(model)
    shards = context.partition_keys
    estimate = _capacity(pipeline, model, reduction, shards, config)
    settings, executor = pipeline.settings, pipeline.shard_executor()
    with executor.start(settings, len(shards), context.log.info) as workers:
        device = workers.device(config.device)
        tasks = [ShardTask(FORWARD, shard, {"spec": config.spec(False, reduction, device), "device": device})
                 for shard in shards]
        outcomes = workers.run(tasks, lambda task, outcome: _verified(context, settings, task, outcome))
    results = [_result(read_table(layout.pool_activations(o.shard), columns=forward.SUMMARY_COLUMNS),
                       layout.pool_activations(o.shard), o.versions[0],
                       {"reused": o.reused[0], "worker": o.worker, **o.stats}) for o in outcomes]
    extra = {**estimate, "executor": executor.describe(), "device": device}
    if len(results) == 1:
        return dg.MaterializeResult(metadata={**results[0].metadata, **extra}, data_version=results[0].data_version)
    per_shard = [{"shard": shard, "rows": r.metadata["row_count"], "reused": r.metadata["reused"],
                  "store_version": r.metadata["store_version"], "worker": o.worker}
                 for shard, r, o in zip(shards, results, outcomes)]
    version = sha256_json([row["store_version"] for row in per_shard])[:16]
    return dg.MaterializeResult(
        metadata={"shards": len(shards), "row_count": sum(row["rows"] for row in per_shard),
                  "recomputed_shards": sum(not row["reused"] for row in per_shard),
                  "tokens": sum(r.metadata["tokens"] for r in results),
                  "per_shard": markdown_table(pa.Table.from_pylist(per_shard), rows=len(per_shard)),
                  "range_version": version, **extra},
        data_version=dg.DataVersion(version))


def _verified(context, settings, task: ShardTask, outcome: ShardOutcome) -> None:
    """A shard's files re-read and checked before its version is recorded (a worker's word is not enough)."""
    verify_outcome(settings, task, outcome)
    state = "up to date" if all(outcome.reused) else "written"
    context.log.info(f"shard {task.shard}: {state} and verified (store version {outcome.versions[0]}, "
                     f"worker {outcome.worker})")


def _capacity(pipeline: LakeResource, model: ModelInfo, reduction: StoreReduction, shards: list[str],
              config: FeaturizerConfig) -> dict:
    """Refuse, before loading the model, a run whose new shard files would not fit the disk or whose
    largest shard would not fit the memory; the estimate goes into the metadata."""
    layout, sizes = pipeline.layout, pipeline.pool().shard_sizes
    new_rows = sum(sizes.get(shard, 0) for shard in shards if not layout.pool_activations(shard).exists())
    per_row = capacity.forward_bytes_per_row(model.num_layers, model.hidden_size, reduction)
    dtype = fz.resolve_dtype(config.dtype, fz.resolve_device(config.device))
    memory = capacity.featurize_memory_bytes(max((sizes.get(s, 0) for s in shards), default=0), model.num_layers,
                                             model.hidden_size, reduction, config.batch_tokens,
                                             capacity.loaded_weight_bytes(Path(model.path), dtype))
    estimate = capacity.require_capacity(f"featurizing {len(shards)} shard(s) ({new_rows:,} new rows at "
                                         f"~{per_row:,} bytes each)", new_rows * per_row, layout.root, memory)
    return {**estimate, "estimated_bytes_per_row": per_row,
            "store_setting": reduction.describe(model.num_layers)}


@dg.asset(
    group_name="features",
    kinds={"torch", "parquet"},
    code_version=fz.FEATURIZER_VERSION,
    partitions_def=capability_partitions,
    deps=["target_sets", "base_model"],
    pool="cpu_heavy",
)
def target_activations(context: dg.AssetExecutionContext, config: FeaturizerConfig,
                       pipeline: LakeResource) -> dg.MaterializeResult:
    """Forward features of one capability's in-domain set, rendered in the same IT template
    (prompt as instruction, reference answer as output), with last-token states for the R1 drift."""
    layout = pipeline.layout
    capability = context.partition_key
    rows, ids, input_version = forward.target_rows(read_table(layout.target_selection(capability)).to_pylist())
    model = pipeline.base_model()
    return featurize_rows(context, model, rows, ids, config, True, layout.target_activations(capability),
                          input_version, pipeline.store_reduction(model))
