"""Close the loop: fine-tune on a subset version, then evaluate the model per capability."""

import dataclasses
import json
from pathlib import Path

import dagster as dg
import pyarrow as pa

from nait_pipeline.defs.metadata import markdown_table, path_value
from nait_pipeline.defs.partitions import SUBSET_VERSION_ASSET, selectable_capabilities, subset_partitions
from nait_pipeline.defs.plots import embedded_png
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.evaluation import intervals, items, runs
from nait_pipeline.lib.evaluation.benchmarks import EvalConfig
from nait_pipeline.lib.evaluation.loop import evaluate_run, run_comparison
from nait_pipeline.lib.features import featurize as fz
from nait_pipeline.lib.io.contract import FINETUNE_SCHEMA
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import write_parquet
from nait_pipeline.lib.io.progress import Progress, to_console
from nait_pipeline.lib.methods.audit import subset_rows
from nait_pipeline.lib.models.train import TrainConfig, fine_tune


class FineTuneConfig(dg.Config):
    mode: str = "lora"
    """lora (peft) | full."""
    epochs: int = 1
    learning_rate: float = 2e-4
    batch_size: int = 8
    max_length: int = 512
    seed: int = 0

    def train_config(self) -> TrainConfig:
        return TrainConfig(mode=self.mode, epochs=self.epochs, learning_rate=self.learning_rate,
                           batch_size=self.batch_size, max_length=self.max_length, seed=self.seed)


class EvaluationConfig(dg.Config):
    sample_size: int = 50
    """Test rows per capability, a fixed-seed sample."""
    max_new_tokens: int = 256
    code_timeout_s: float = 10.0
    items_per_capability: int = 200
    """Fixed, seeded, stratified test items per capability scored per item by forward passes only
    (gold-solution log-probability per token, option-normalised log-probability); 0: none."""
    generation_backend: str = "auto"
    """auto (vLLM when a GPU and the gpu extra are present, else transformers) | vllm | transformers."""


def finetuned_dir(pipeline: LakeResource, run_key: str) -> Path:
    return pipeline.settings.models_dir / "finetuned" / runs.model_folder(run_key)


@dg.asset(
    key=SUBSET_VERSION_ASSET,
    group_name="loop",
    kinds={"parquet"},
    code_version="1",
    partitions_def=subset_partitions,
)
def subset_version(context: dg.AssetExecutionContext, pipeline: LakeResource) -> dg.MaterializeResult:
    """One stored subset version, the input of its fine-tunes: recorded by the selection that wrote it (and
    by the protocol for its replicates), so materializing it by hand only re-checks the stored file. Its data
    version is the subset version, a content hash: re-selecting another method leaves this model's inputs as
    they were. A replicate `<version>@order<k>` is the same subset; `base` is no subset (the zero point)."""
    layout = pipeline.layout
    version, _ = runs.parse_run_key(context.partition_key)
    if version is None:
        return dg.MaterializeResult(metadata={"subset_version": "none (the base model)"},
                                    data_version=dg.DataVersion(context.partition_key))
    rows = subset_rows(layout, version)
    return dg.MaterializeResult(
        metadata={"subset_version": version, "rows": len(rows),
                  "preview": markdown_table(rows.select(["rank", "example_id", "instruction"]), 5)},
        data_version=dg.DataVersion(version))


@dg.asset(
    group_name="loop",
    kinds={"torch"},
    code_version="1",
    partitions_def=subset_partitions,
    deps=["base_model", SUBSET_VERSION_ASSET],
    pool="cpu_heavy",
)
def finetuned_model(context: dg.AssetExecutionContext, config: FineTuneConfig,
                    pipeline: LakeResource) -> dg.MaterializeResult:
    """The base model fine-tuned on one subset version, in the same chat/IT template used for
    selection, loss on response tokens only (LoRA merged into the weights, or full fine-tuning).
    Written to a temporary folder and renamed into place only when training succeeded. A partition
    `<version>@order<k>` trains on the same subset with the seed + k (a training-order replicate)."""
    layout = pipeline.layout
    run_key = context.partition_key
    subset_version, _ = runs.parse_run_key(run_key)
    if subset_version is None:
        raise ValueError("the base model is evaluated as it is, not fine-tuned: materialize evaluation[base]")
    model = pipeline.base_model()
    rows = subset_rows(layout, subset_version).to_pylist()
    train = dataclasses.replace(config.train_config(), seed=runs.run_seed(config.seed, run_key))
    destination = finetuned_dir(pipeline, run_key)
    every = max(1, len(rows) // train.batch_size // 10)
    meter = Progress(f"fine-tuning on {run_key}", 0, unit="steps", rate_unit="")

    def progress(done: int, total: int, loss: float) -> None:
        meter.total = total
        line = f"{meter.update(done)}, loss {loss:.4f}"
        to_console(line, final=done == total)
        if done % every == 0 or done == total:
            context.log.info(line)

    result = fine_tune(Path(model.path), rows, train, destination, progress, device=fz.resolve_device("auto"))
    params = train.as_dict()
    write_parquet(pa.Table.from_pylist([dict(
        subset_version=run_key, base_model_id=model.model_id, model_path=str(destination),
        train_params_json=json.dumps(params, sort_keys=True), examples=len(rows), steps=result.steps,
        tokens=result.tokens, final_loss=result.losses[-1], seconds=result.seconds)], schema=FINETUNE_SCHEMA),
        layout.finetune_run(run_key))
    return dg.MaterializeResult(
        metadata={"examples": len(rows), "steps": result.steps, "tokens": result.tokens,
                  "first_loss": result.losses[0], "final_loss": result.losses[-1],
                  "seconds": round(result.seconds, 1), "path": path_value(destination),
                  "train_params": dg.MetadataValue.json(params)},
        data_version=dg.DataVersion(sha256_json({"subset": run_key, "params": params,
                                                 "base": model.model_id})[:16]),
    )


@dg.asset(
    group_name="loop",
    kinds={"torch", "parquet"},
    code_version="1",
    partitions_def=subset_partitions,
    deps=["finetuned_model", dg.AssetDep("target_test_sets", partition_mapping=dg.AllPartitionMapping())],
    pool="cpu_heavy",
)
def evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig,
               pipeline: LakeResource) -> dg.MaterializeResult:
    """A fine-tuned model (a run key: subset version or replicate; `base`: the model before fine-tuning,
    the zero point) on every capability's held-out test split:
    answer NLL everywhere, MMLU accuracy, GSM8K and BBH exact match, MBPP/HumanEval pass@1 (code
    executed in a sandbox). Rows land in the `evaluations` view."""
    layout = pipeline.layout
    run_key = context.partition_key  # a subset version, a replicate, or `base`
    model_dir = Path(pipeline.base_model().path) if run_key == runs.BASE else finetuned_dir(pipeline, run_key)
    eval_config = EvalConfig(sample_size=config.sample_size, max_new_tokens=config.max_new_tokens,
                             code_timeout_s=config.code_timeout_s, items_per_capability=config.items_per_capability)
    capabilities = selectable_capabilities(context.instance)
    meter = Progress(f"evaluating {run_key}", len(capabilities), unit="capabilities", rate_unit="")

    def on_capability(done: int, total: int) -> None:
        line = meter.update(done)
        context.log.info(line)
        to_console(line, final=done == total)

    result = evaluate_run(layout, run_key, model_dir, capabilities, eval_config, config.generation_backend,
                          fz.resolve_device("auto"), context.log.info, on_capability)
    for capability in result.no_test_rows:
        context.log.warning(f"{capability}: the test split has no rows, so nothing to evaluate")
    table = result.table
    return dg.MaterializeResult(
        metadata={"row_count": len(table), "seconds": round(result.seconds, 1), "items": len(result.item_table),
                  "items_not_computable": sum(1 for s in result.item_table.column("status").to_pylist()
                                              if s != items.OK),
                  "generation_backend": result.backend, "no_test_rows": dg.MetadataValue.json(result.no_test_rows),
                  "results": markdown_table(table.select(["capability", "metric", "value", "n"]), len(table))},
        data_version=dg.DataVersion(sha256_json([(r["capability"], r["metric"], r["value"])
                                                 for r in table.to_pylist()])[:16]),
    )


class ComparisonConfig(dg.Config):
    name: str = "default"
    """Names the result (`comparisons/<name>.parquet`, column `comparison`); protocols use their own name."""
    budget_ratio: float = 0.1
    """The budget whose subsets are compared (the full pool is always the reference)."""
    random_seeds: list[int] = [0, 1, 2]
    """Seeds of the seeded methods (random, random_balanced) that are compared."""
    methods: list[str] | None = None
    """Registered methods to compare; None: every method with a current subset at the budget."""
    capabilities: list[str] | None = None
    """The capability subsets compared (["all"]: one model per method); None: every capability's subset."""
    random_reference: str = "random"
    """The seeded method whose runs are the "random" every method is compared with (random_stratified on a
    mixed pool)."""


@dg.asset(
    group_name="loop",
    kinds={"parquet"},
    code_version="4",
    deps=[dg.AssetDep("evaluation", partition_mapping=dg.AllPartitionMapping())],
)
def comparison(context: dg.AssetExecutionContext, config: ComparisonConfig,
               pipeline: LakeResource) -> dg.MaterializeResult:
    """Every method against random (mean ± std over seeds) and the full pool, per capability and metric,
    with each method's selection cost (wall time, tokens through the model) and training cost beside
    its quality. Covers, on the current pool version, the subsets each method's last selection wrote
    at the configured budget (the `current_subsets` table), the configured seeds of seeded methods and
    the full pool; rows land in the `comparisons` view, with a markdown report and a plot beside the
    Parquet file."""
    layout = pipeline.layout
    result = run_comparison(layout, config.name, config.budget_ratio, config.random_seeds, config.methods,
                            config.capabilities, config.random_reference)
    if result.not_evaluated:
        context.log.warning(f"left out, not evaluated yet: {result.not_evaluated}")
    table, interval_table, report, evaluated = result.table, result.interval_table, result.report, result.evaluated
    not_evaluated, destination = result.not_evaluated, result.path
    plots = {"plot": embedded_png(result.plot, f"comparison {config.name}")}
    if result.interval_plot is not None:
        plots["intervals_vs_random"] = embedded_png(result.interval_plot, f"Δ vs random, {config.name}")
    return dg.MaterializeResult(
        metadata={"report": dg.MetadataValue.md(report), **plots,
                  "runs": len(evaluated), "not_evaluated": dg.MetadataValue.json(not_evaluated),
                  "row_count": len(table), "path": path_value(destination),
                  "beats_random_on_every_capability": dg.MetadataValue.json(
                      intervals.beats_random_everywhere(interval_table))},
        data_version=dg.DataVersion(sha256_json(table.select(["method", "eval_capability", "metric", "mean"])
                                                .to_pylist())[:16]),
    )
