"""Close the loop: fine-tune on a subset version, then evaluate the model per capability."""

import dataclasses
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from nait_pipeline.defs.metadata import markdown_table, path_value
from nait_pipeline.defs.partitions import SUBSET_VERSION_ASSET, selectable_capabilities, subset_partitions
from nait_pipeline.defs.plots import embedded_png
from nait_pipeline.defs.resources import PipelineResource
from nait_pipeline.lib.evaluation import comparison as cmp
from nait_pipeline.lib.evaluation import intervals, items, runs
from nait_pipeline.lib.evaluation.benchmarks import EvalConfig, evaluate_capability
from nait_pipeline.lib.evaluation.evaluate import choose_generation_backend, make_generator
from nait_pipeline.lib.evaluation.protocol import compared_subset_versions
from nait_pipeline.lib.features import featurize as fz
from nait_pipeline.lib.io.contract import EVALUATION_ITEMS_SCHEMA, EVALUATIONS_SCHEMA, FINETUNE_SCHEMA
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import atomic_path, read_metadata, write_parquet
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.progress import Progress, to_console
from nait_pipeline.lib.methods import METHODS
from nait_pipeline.lib.methods.audit import subset_rows
from nait_pipeline.lib.models.model_io import read_model_record
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


def finetuned_dir(pipeline: PipelineResource, run_key: str) -> Path:
    return pipeline.settings.models_dir / "finetuned" / runs.model_folder(run_key)


@dg.asset(
    key=SUBSET_VERSION_ASSET,
    group_name="loop",
    kinds={"parquet"},
    code_version="1",
    partitions_def=subset_partitions,
)
def subset_version(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """One stored subset version, the input of its fine-tunes: recorded by the selection that wrote it (and
    by the protocol for its replicates), so materializing it by hand only re-checks the stored file. Its data
    version is the subset version, a content hash: re-selecting another method leaves this model's inputs as
    they were. A replicate `<version>@order<k>` is the same subset; `base` is no subset (the zero point)."""
    layout = LakeLayout(pipeline.settings.lake_dir)
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
                    pipeline: PipelineResource) -> dg.MaterializeResult:
    """The base model fine-tuned on one subset version, in the same chat/IT template used for
    selection, loss on response tokens only (LoRA merged into the weights, or full fine-tuning).
    Written to a temporary folder and renamed into place only when training succeeded. A partition
    `<version>@order<k>` trains on the same subset with the seed + k (a training-order replicate)."""
    layout = LakeLayout(pipeline.settings.lake_dir)
    run_key = context.partition_key
    subset_version, _ = runs.parse_run_key(run_key)
    if subset_version is None:
        raise ValueError("the base model is evaluated as it is, not fine-tuned: materialize evaluation[base]")
    model = read_model_record(layout)
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

    result = fine_tune(Path(model["path"]), rows, train, destination, progress, device=fz.resolve_device("auto"))
    params = train.as_dict()
    write_parquet(pa.Table.from_pylist([dict(
        subset_version=run_key, base_model_id=model["model_id"], model_path=str(destination),
        train_params_json=json.dumps(params, sort_keys=True), examples=len(rows), steps=result.steps,
        tokens=result.tokens, final_loss=result.losses[-1], seconds=result.seconds)], schema=FINETUNE_SCHEMA),
        layout.finetune_run(run_key))
    return dg.MaterializeResult(
        metadata={"examples": len(rows), "steps": result.steps, "tokens": result.tokens,
                  "first_loss": result.losses[0], "final_loss": result.losses[-1],
                  "seconds": round(result.seconds, 1), "path": path_value(destination),
                  "train_params": dg.MetadataValue.json(params)},
        data_version=dg.DataVersion(sha256_json({"subset": run_key, "params": params,
                                                 "base": model["model_id"]})[:16]),
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
               pipeline: PipelineResource) -> dg.MaterializeResult:
    """A fine-tuned model (a run key: subset version or replicate; `base`: the model before fine-tuning,
    the zero point) on every capability's held-out test split:
    answer NLL everywhere, MMLU accuracy, GSM8K and BBH exact match, MBPP/HumanEval pass@1 (code
    executed in a sandbox). Rows land in the `evaluations` view."""
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate

    layout = LakeLayout(pipeline.settings.lake_dir)
    subset_version = context.partition_key  # a run key: a subset version, a replicate, or `base`
    if subset_version == runs.BASE:
        model_dir = Path(read_model_record(layout)["path"])  # the zero point: no fine-tuning
    else:
        model_dir = finetuned_dir(pipeline, subset_version)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"no fine-tuned model at {model_dir}: materialize finetuned_model[{subset_version}]")
    model = model_io.load_causal_lm(model_dir, device=fz.resolve_device("auto"))
    template = ChatTemplate(model_io.load_tokenizer(model_dir))
    eval_config = EvalConfig(sample_size=config.sample_size, max_new_tokens=config.max_new_tokens,
                             code_timeout_s=config.code_timeout_s, items_per_capability=config.items_per_capability)
    backend = choose_generation_backend(config.generation_backend)
    context.log.info(f"generation backend: {backend}")
    generator = make_generator(backend, model, model_dir, template)
    params = json.dumps({**eval_config.__dict__, "generation_backend": backend}, sort_keys=True)
    created = datetime.now(timezone.utc)
    records, no_test_rows, item_rows = [], [], []
    started = time.perf_counter()
    capabilities = selectable_capabilities(context.instance)
    meter = Progress(f"evaluating {subset_version}", len(capabilities), unit="capabilities", rate_unit="")
    for done, capability in enumerate(capabilities, start=1):
        path = layout.target_test(capability)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: materialize target_test_sets[{capability}] first")
        rows = pq.read_table(path).to_pylist()
        if not rows:
            no_test_rows.append(capability)
            context.log.warning(f"{capability}: the test split has no rows, so nothing to evaluate")
            continue
        for result in evaluate_capability(model, template, capability, rows, eval_config, context.log.info,
                                            generator):
            records.append(dict(subset_version=subset_version, capability=capability, eval_params_json=params,
                                created_at=created, **result))
        scored = items.score_capability_items(model, template, capability, rows, eval_config.items_per_capability)
        item_rows += [dict(subset_version=subset_version, capability=capability, eval_params_json=params,
                           **dataclasses.asdict(item)) for item in scored]
        for (family, metric), summary in items.aggregate(scored).items():
            records.append(dict(subset_version=subset_version, capability=capability, eval_params_json=params,
                                created_at=created, metric=f"{family}_{metric}", value=summary["value"],
                                n=summary["n"]))
        line = meter.update(done)
        context.log.info(line)
        to_console(line, final=done == len(capabilities))
    table = pa.Table.from_pylist(records, schema=EVALUATIONS_SCHEMA)
    item_table = pa.Table.from_pylist(item_rows, schema=EVALUATION_ITEMS_SCHEMA)
    write_parquet(item_table, layout.evaluation_items(subset_version))
    write_parquet(table, layout.evaluation(subset_version))
    return dg.MaterializeResult(
        metadata={"row_count": len(table), "seconds": round(time.perf_counter() - started, 1),
                  "items": len(item_table),
                  "items_not_computable": sum(1 for r in item_rows if r["status"] != items.OK),
                  "generation_backend": backend, "no_test_rows": dg.MetadataValue.json(no_test_rows),
                  "results": markdown_table(
            table.select(["capability", "metric", "value", "n"]), len(table))},
        data_version=dg.DataVersion(sha256_json([(r["capability"], r["metric"], r["value"]) for r in records])[:16]),
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
               pipeline: PipelineResource) -> dg.MaterializeResult:
    """Every method against random (mean ± std over seeds) and the full pool, per capability and metric,
    with each method's selection cost (wall time, tokens through the model) and training cost beside
    its quality. Covers, on the current pool version, the subsets each method's last selection wrote
    at the configured budget (the `current_subsets` table), the configured seeds of seeded methods and
    the full pool; rows land in the `comparisons` view, with a markdown report and a plot beside the
    Parquet file."""
    layout = LakeLayout(pipeline.settings.lake_dir)
    pool_version = read_metadata(layout.pool_examples)["pool_version"]
    unknown = sorted(set(config.methods or []) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; registered: {sorted(METHODS)}")
    versions = compared_subset_versions(layout, pool_version, config.budget_ratio, config.random_seeds,
                                        config.methods, config.capabilities)
    evaluated = [v for v in cmp.run_keys(layout, versions) if layout.evaluation(v).exists()]
    not_evaluated = sorted(set(versions) - set(evaluated))
    if not evaluated:
        raise ValueError(f"none of the {len(versions)} subset versions at budget {config.budget_ratio} on pool "
                         f"{pool_version} has an evaluation: materialize finetuned_model and evaluation first")
    if not_evaluated:
        context.log.warning(f"left out, not evaluated yet: {not_evaluated}")
    compared_runs = cmp.load_runs(layout, evaluated, config.random_reference)
    table = cmp.compare(config.name, compared_runs, cmp.load_evaluations(layout, evaluated))
    destination = layout.comparison(config.name)
    run_record = {"pool_version": pool_version, "budget_ratio": config.budget_ratio,
                  "random_seeds": list(config.random_seeds), "random_reference": config.random_reference,
                  "subset_versions": evaluated}
    write_parquet(table, destination, run_record)
    interval_table = intervals.interval_table(config.name, compared_runs, intervals.load_items(layout, evaluated))
    write_parquet(interval_table, layout.comparison_intervals(config.name), run_record)
    report = (cmp.report_markdown(table) + "\n\nPer-item metrics (higher is better), Δ [one-sided 95 % bounds] "
              "against random and the full pool:\n\n" + intervals.report_markdown(interval_table) +
              "\n\nOffline diagnostics of the compared subsets (enrichment: share of the subset ÷ share of the "
              "pool):\n\n" + cmp.diagnostics_markdown(compared_runs, cmp.load_diagnostics(layout, compared_runs)))
    with atomic_path(destination.with_suffix(".md"), ".md") as tmp:
        tmp.write_text(f"# Comparison {config.name}\n\nPool version {pool_version}, budget {config.budget_ratio}, "
                       f"random = {config.random_reference}, seeds {list(config.random_seeds)}.\n\n{report}\n")
    figure = cmp.plot(table, destination.with_suffix(".png"))
    interval_figure = intervals.plot(interval_table, destination.with_name(f"{config.name}_intervals.png"))
    plots = {"plot": embedded_png(figure, f"comparison {config.name}")}
    if interval_figure is not None:
        plots["intervals_vs_random"] = embedded_png(interval_figure, f"Δ vs random, {config.name}")
    return dg.MaterializeResult(
        metadata={"report": dg.MetadataValue.md(report), **plots,
                  "runs": len(evaluated), "not_evaluated": dg.MetadataValue.json(not_evaluated),
                  "row_count": len(table), "path": path_value(destination),
                  "beats_random_on_every_capability": dg.MetadataValue.json(
                      intervals.beats_random_everywhere(interval_table))},
        data_version=dg.DataVersion(sha256_json(table.select(["method", "eval_capability", "metric", "mean"])
                                                .to_pylist())[:16]),
    )
