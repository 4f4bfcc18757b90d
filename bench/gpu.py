"""The GPU path, measured: the project's featurizer, per-example gradients and training step on a GPU.

    python3 bench/gpu.py                       # on a GPU machine: SmolLM2-135M, 1B and 8B Llama shapes
    .venv/bin/python bench/gpu.py --tiny       # the CPU smoke run the test suite makes (seconds)

Needs only torch, transformers, peft, numpy and pyarrow: the models are randomly initialised from configs of
real shapes (no weights travel) and rows are seeded token ids (no tokenizer files), so it runs where nothing
can be installed. Every measured path is the project's own code (``lib/features/featurize.py``,
``lib/features/gradients.py``, ``lib/models/train.py``), not a copy. For each model size it measures:

- featurizer tokens/s at 512-token rows, with the project's default token budget per batch and with a
  GPU-sized one, against a naive batch-1 HF forward (full LM head, every hidden state); model FLOP
  utilisation as 2·P·tokens/s (P the decoder's parameters, embeddings excluded) over the bf16 matmul rate
  measured in this run and over the datasheet's dense bf16 rate; peak GPU memory;
- per-example LoRA gradients in LESS's setting (rank 8, q/k/v/o, float32 as ``pool_gradients`` runs them):
  rows/s of the batched hooks against the batch-1 ``.grad`` loop, the speed-up, the per-row cosine, and
  rows/s of the whole feature (Adam preconditioning, float16 cast, 1,024-d Rademacher projection);
- parity: one random tiny model featurized in bf16 on the device and in float32 on the CPU: per-layer
  cosine of the token means and the top-10 % overlap of the NAIT score (directions from a seeded target set);
- LoRA fine-tuning tokens/s (``training_step`` under the bf16 autocast ``fine_tune`` uses) for one size.

Where a target is missed (featurizer >= 40 % utilisation at 1B and 8B; batched gradients >= 5x the loop at
cosine >= 0.999), the JSON's ``bounded_by`` says what the measurements point at. Writes
``bench/results/gpu.json`` (``--out`` elsewhere) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, importable without installing it

import numpy as np  # noqa: E402

from nait_pipeline.lib.features import gradients as gr  # noqa: E402
from nait_pipeline.lib.features.featurize import FeaturizerSpec, featurize  # noqa: E402
from nait_pipeline.lib.features.projection import ProjectionSpec, RademacherProjector  # noqa: E402
from nait_pipeline.lib.methods.nait import nait_math  # noqa: E402
from nait_pipeline.lib.models.template import TokenizedExample  # noqa: E402
from nait_pipeline.lib.models.train import TrainConfig, collate, length_grouped_batches, training_step  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ROW_TOKENS = 512
PROMPT_TOKENS = 128  # the rest of a row is response: it has a loss and a gradient

# Llama-architecture shapes (HF config fields) of the models users run, and a tiny one for the smoke run.
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}
# Rows per measurement, by size: enough tokens that start-up does not dominate, little enough for 8 minutes.
FEATURIZE_ROWS = {"tiny": 32, "smollm2-135m": 2048, "llama-1b": 1024, "llama-8b": 512}
LOOP_ROWS = {"tiny": 8, "smollm2-135m": 64, "llama-1b": 64, "llama-8b": 32}
GRADIENT_ROWS = {"tiny": 8, "smollm2-135m": 64, "llama-1b": 32}  # float32 8B backward at 16 rows: out of scope
# Dense bf16 tensor-core rates from the vendors' datasheets (no sparsity), by a substring of the device name.
DATASHEET_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
                  ("L4", 121e12), ("A10", 125e12)]
TARGET_MFU = 0.40
TARGET_SPEEDUP = 5.0
TARGET_COSINE = 0.999


class SeededTemplate:
    """The template interface the featurizer and gradient code call, over seeded token ids: row ``i`` of
    length ``n`` is ``n`` ids from a generator seeded by ``i``; its first ``PROMPT_TOKENS`` are the prompt."""

    template_hash = "seeded-ids"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.tokenizer = SimpleNamespace(pad_token_id=0)

    def tokenize_row(self, row: dict, max_length: int) -> TokenizedExample:
        length = int(row["input"])
        ids = np.random.default_rng(int(row["instruction"])).integers(1, self.vocab_size, length).tolist()
        return TokenizedExample(input_ids=ids[:max_length], response_start=min(PROMPT_TOKENS, length, max_length),
                                truncated=length > max_length, full_length=length)


def seeded_rows(count: int, first: int = 0, lengths: list[int] | None = None) -> list[dict]:
    lengths = lengths or [ROW_TOKENS] * count
    return [{"instruction": str(first + i), "input": str(lengths[i]), "output": ""} for i in range(count)]


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def matmul_rate(device: str, float32: bool) -> float:
    """FLOP/s of a square matrix product, mean of 10 after 3 warm-ups: bf16 (the featurizer's dtype on a GPU)
    or float32 (the gradients' dtype; also the CPU smoke run's, where bf16 may be emulated)."""
    import torch

    n = 8192 if device.startswith("cuda") else 512
    dtype = torch.float32 if float32 else torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    synchronize(device)
    return 10 * 2 * n**3 / (time.perf_counter() - started)


def datasheet_rate(device_name: str) -> float | None:
    return next((rate for key, rate in DATASHEET_BF16 if key in device_name), None)


def build_model(shape: str, device: str, dtype, seed: int = 0):
    """A randomly initialised Llama of ``shape``, built directly on ``device`` in ``dtype``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def decoder_parameters(model) -> int:
    """Parameters a token passes through in the decoder: everything but the embedding and the LM head."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    skip = {id(embedding), id(head)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def naive_loop_tokens_per_s(model, template: SeededTemplate, rows: list[dict], device: str) -> float:
    """What a first attempt does: one row per forward, the whole HF model with its LM head and every hidden
    state returned."""
    import torch

    tokens = [template.tokenize_row(r, ROW_TOKENS).input_ids for r in rows]
    with torch.inference_mode():
        model(input_ids=torch.tensor([tokens[0]], device=device), output_hidden_states=True)
        synchronize(device)
        started = time.perf_counter()
        for ids in tokens:
            output = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
            [h.float().mean(1).cpu() for h in output.hidden_states]
        synchronize(device)
    return sum(map(len, tokens)) / (time.perf_counter() - started)


def decoder_only_tokens_per_s(model, template: SeededTemplate, rows: list[dict], batch_rows: int, device: str) -> float:
    """The decoder's forward alone at the featurizer's batch shape: the ceiling the featurizer's reductions,
    LM-head rows and host copies are measured against."""
    import torch

    ids = torch.tensor([template.tokenize_row(r, ROW_TOKENS).input_ids
                        for r in rows[:batch_rows]], device=device)
    with torch.inference_mode():
        model.model(input_ids=ids, use_cache=False)
        synchronize(device)
        started = time.perf_counter()
        repeats = 5
        for _ in range(repeats):
            model.model(input_ids=ids, use_cache=False)
        synchronize(device)
    return repeats * ids.numel() / (time.perf_counter() - started)


def measure_featurizer(shape: str, device: str, rates: dict, tiny: bool) -> dict:
    import torch

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = build_model(shape, device, dtype)
    template = SeededTemplate(model.config.vocab_size)
    params = decoder_parameters(model)
    rows = seeded_rows(FEATURIZE_ROWS[shape])
    ids = [f"r{i}" for i in range(len(rows))]
    dtype_name = "float32" if device == "cpu" else "bfloat16"
    result = {"model": shape, "decoder_params": params, "rows": len(rows), "row_tokens": ROW_TOKENS,
              "dtype": dtype_name, "runs": []}
    # The default budget, a large fixed one, and on a GPU the budget sized from its free memory (0).
    budgets = [FeaturizerSpec().batch_tokens] + ([] if tiny else [64 * ROW_TOKENS]) + \
        ([0] if device.startswith("cuda") else [])
    for requested in budgets:
        spec = FeaturizerSpec(max_length=ROW_TOKENS, dtype=dtype_name, batch_tokens=requested, max_batch_size=128)
        warm = featurize(model, template, rows[: 2 * max(1, (requested or 4096) // ROW_TOKENS)], spec, ids)
        batch_tokens = warm.stats["batch_tokens"]
        reset_peak(device)
        synchronize(device)
        started = time.perf_counter()
        features = featurize(model, template, rows, spec, ids)
        synchronize(device)
        seconds = time.perf_counter() - started
        tokens_per_s = float(features.n_tokens.sum()) / seconds
        batch_rows = min(128, max(1, batch_tokens // ROW_TOKENS))
        decoder_rate = decoder_only_tokens_per_s(model, template, rows, batch_rows, device)
        result["runs"].append({
            "batch_tokens": batch_tokens, "sized_from_free_memory": requested == 0, "batch_rows": batch_rows,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens_per_s), "decoder_only_tokens_per_s": round(decoder_rate),
            "featurizer_share_of_decoder_only": round(tokens_per_s / decoder_rate, 3),
            "mfu_measured": round(2 * params * tokens_per_s / rates["measured"], 4),
            "mfu_datasheet": (round(2 * params * tokens_per_s / rates["datasheet"], 4) if rates["datasheet"] else None),
            "decoder_only_mfu_measured": round(2 * params * decoder_rate / rates["measured"], 4),
            "peak_gpu_gib": peak_gib(device)})
    best = max(result["runs"], key=lambda run: run["tokens_per_s"])
    naive = naive_loop_tokens_per_s(model, template, rows[: LOOP_ROWS[shape]], device)
    result.update({"naive_loop_tokens_per_s": round(naive), "best": best,
                   "speedup_over_naive": round(best["tokens_per_s"] / naive, 2)})
    if shape in ("llama-1b", "llama-8b") and best["mfu_measured"] < TARGET_MFU:
        result["bounded_by"] = featurizer_bound(best)
    return result


def featurizer_bound(run: dict) -> str:
    share, decoder_mfu = run["featurizer_share_of_decoder_only"], run["decoder_only_mfu_measured"]
    if share < 0.8:
        return (f"the featurizer's own work: it runs at {share:.0%} of the decoder-only forward at the same batch "
                "(per-layer float32 reductions over every hidden state, the LM head on response rows, a "
                "device-to-host copy per batch)")
    return (f"the decoder's forward itself at {decoder_mfu:.0%} of the measured matmul rate at this batch: "
            "attention and element-wise kernels (memory traffic) and kernel launches between small matmuls")


def lora_model(shape: str, device: str):
    import torch

    model = gr._lora_model(build_model(shape, device, torch.float32), gr.WarmupConfig())
    torch.manual_seed(1)
    for name, parameter in gr.lora_parameters(model):
        if "lora_B" in name:  # a fresh adapter's B is zero, so the A matrices would get no gradient
            parameter.data.normal_(0, 0.01)
    return model.eval()


def measure_gradients(shape: str, device: str, rate: float) -> dict:
    import torch

    model = lora_model(shape, device)
    template = SeededTemplate(model.config.vocab_size)
    rows = seeded_rows(GRADIENT_ROWS[shape], first=100_000)
    examples = [template.tokenize_row(r, ROW_TOKENS) for r in rows]
    batch_rows = gr.default_batch_rows(device)
    gr.loop_gradients(model, examples[:1], 0, device)  # warm-up
    reset_peak(device)
    synchronize(device)
    started = time.perf_counter()
    reference = gr.loop_gradients(model, examples, 0, device)
    synchronize(device)
    loop_seconds = time.perf_counter() - started
    loop_peak = peak_gib(device)
    batched = torch.zeros_like(reference)

    def keep(indices, gradients):
        batched[indices] = gradients

    reset_peak(device)
    synchronize(device)
    started = time.perf_counter()
    gr.per_example_gradients(model, examples, 0, batch_tokens=batch_rows * ROW_TOKENS, max_batch_size=batch_rows,
                             on_batch=keep, device=device)
    synchronize(device)
    batched_seconds = time.perf_counter() - started
    cosine = torch.nn.functional.cosine_similarity(batched.double(), reference.double(), dim=1)

    lora = gr.lora_parameters(model)
    projector = RademacherProjector(ProjectionSpec(gr.count_parameters(model), 1024))
    projector.project(torch.zeros(1, projector.spec.num_params))  # the cached matrix is built outside the timing
    generator = torch.Generator().manual_seed(2)
    exp_avg = [torch.randn(p.shape, generator=generator) * 1e-4 for _, p in lora]
    exp_avg_sq = [torch.rand(p.shape, generator=generator) * 1e-6 for _, p in lora]
    synchronize(device)
    started = time.perf_counter()
    gr.gradient_features(model, exp_avg, exp_avg_sq, template, rows, [f"r{i}" for i in range(len(rows))], ROW_TOKENS,
                         projector, "adam", batch_tokens=batch_rows * ROW_TOKENS, device=device, batch_rows=batch_rows)
    synchronize(device)
    feature_seconds = time.perf_counter() - started
    speedup = loop_seconds / batched_seconds
    result = {"model": shape, "rows": len(rows), "row_tokens": ROW_TOKENS, "lora_rank": gr.WarmupConfig().lora_r,
              "lora_params": gr.count_parameters(model), "batch_rows": batch_rows, "dtype": "float32",
              "loop_rows_per_s": round(len(rows) / loop_seconds, 3),
              "batched_rows_per_s": round(len(rows) / batched_seconds, 3), "speedup": round(speedup, 2),
              "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
              "features_rows_per_s": round(len(rows) / feature_seconds, 3),
              "projection_share_of_features": round(max(0.0, 1 - batched_seconds / feature_seconds), 3),
              "loop_peak_gpu_gib": loop_peak, "batched_peak_gpu_gib": peak_gib(device)}
    # A row costs ~4·P·T FLOPs (forward, and backward to the LoRA inputs through the frozen weights).
    flops_per_row = 4 * decoder_parameters(model) * ROW_TOKENS
    result["loop_mfu_measured"] = round(flops_per_row * len(rows) / loop_seconds / rate, 4)
    result["batched_mfu_measured"] = round(flops_per_row * len(rows) / batched_seconds / rate, 4)
    if result["cosine_min"] < TARGET_COSINE:
        result["bounded_by"] = f"agreement: the batched gradients' min per-row cosine is {result['cosine_min']:.6f}"
    elif speedup < TARGET_SPEEDUP:
        result["bounded_by"] = (
            f"compute: the batch-1 loop already runs at {result['loop_mfu_measured']:.0%} of the measured matmul "
            f"rate (batched {result['batched_mfu_measured']:.0%}), so batching has little launch overhead to remove"
            if result["loop_mfu_measured"] >= 0.25 else
            f"neither path is matmul-bound (loop {result['loop_mfu_measured']:.0%}, batched "
            f"{result['batched_mfu_measured']:.0%} of the measured matmul rate): attention and element-wise kernels, "
            "the per-example outer products and host-side collation take the time")
    return result  # the model and gradients go with this frame, before the next size is built


def featurize_on(model, template, rows, device: str, dtype_name: str):
    spec = FeaturizerSpec(max_length=ROW_TOKENS, dtype=dtype_name)
    ids = [f"r{i}" for i in range(len(rows))]
    return featurize(model.to(device), template, rows, spec, ids)


def nait_scores(pool, target) -> np.ndarray:
    directions = nait_math.fit_directions(nait_math.drift(target.layer_mean, target.first_token, None, "R2"))
    return nait_math.aggregate(nait_math.layer_projections(pool.layer_mean, directions.vectors))


def top_overlap(first: np.ndarray, second: np.ndarray, share: float = 0.1) -> float:
    k = max(1, int(round(share * len(first))))
    return len(set(np.argsort(-first, kind="stable")[:k]) & set(np.argsort(-second, kind="stable")[:k])) / k


def measure_parity(device: str, max_tokens: int = ROW_TOKENS) -> dict:
    """One random tiny model (4 layers, 256 wide) on seeded rows of mixed length up to ``max_tokens``: bf16 on
    ``device`` against float32 on the CPU."""
    import torch

    shape = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=True)
    SHAPES["parity"] = shape
    model = build_model("parity", "cpu", torch.float32, seed=3)
    template = SeededTemplate(shape["vocab_size"])
    lengths = np.random.default_rng(4).integers(PROMPT_TOKENS + 8, max_tokens, 264).tolist()
    pool_rows = seeded_rows(200, first=200_000, lengths=lengths[:200])
    target_rows = seeded_rows(64, first=300_000, lengths=lengths[200:])
    reference = [featurize_on(model, template, rows, "cpu", "float32") for rows in (pool_rows, target_rows)]
    accelerated = [featurize_on(model, template, rows, device, "bfloat16") for rows in (pool_rows, target_rows)]
    a, b = reference[0].layer_mean.astype(np.float64), accelerated[0].layer_mean.astype(np.float64)
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))  # [N, L]
    overlap = top_overlap(nait_scores(*reference), nait_scores(*accelerated))
    return {"model": shape, "pool_rows": len(pool_rows), "target_rows": len(target_rows), "max_tokens": max_tokens,
            "device": device, "dtypes": ["float32 on cpu", f"bfloat16 on {device}"],
            "cosine_per_layer_min": [round(float(c), 6) for c in cosine.min(0)],
            "cosine_min": float(cosine.min()), "nait_top10_overlap": overlap,
            "passes": bool(cosine.min() >= TARGET_COSINE and overlap >= 0.95)}


def measure_finetune(shape: str, device: str, steps: int) -> dict:
    """LoRA fine-tuning through ``training_step``, as ``fine_tune`` runs it: float32 weights, bf16 autocast
    on CUDA, batches of 8 rows."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    config = TrainConfig()
    model = build_model(shape, device, torch.float32)
    params = decoder_parameters(model)
    model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                             lora_dropout=config.lora_dropout, target_modules=list(config.lora_targets),
                                             task_type="CAUSAL_LM"))
    model.train()
    template = SeededTemplate(model.config.vocab_size)
    examples = [template.tokenize_row(r, ROW_TOKENS)
                for r in seeded_rows(config.batch_size * (steps + 1), first=400_000)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps + 1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    batches = length_grouped_batches(examples, config.batch_size, config.seed, 0)
    reset_peak(device)
    tokens = 0
    for step, batch in enumerate(batches):
        input_ids, mask, labels = (t.to(device) for t in collate(batch, 0))
        training_step(model, trainable, optimizer, scheduler, input_ids, mask, labels, f"at step {step}", autocast)
        if step == 0:  # the first step compiles kernels and allocates: outside the timing
            synchronize(device)
            started = time.perf_counter()
        else:
            tokens += int(mask.sum())
    synchronize(device)
    tokens_per_s = tokens / (time.perf_counter() - started)
    return {"model": shape, "mode": "lora", "lora_rank": config.lora_r, "batch_size": config.batch_size,
            "row_tokens": ROW_TOKENS, "steps": steps, "tokens_per_s": round(tokens_per_s),
            "flops_per_token": "4·P (forward, and backward to the LoRA inputs through frozen weights)",
            "peak_gpu_gib": peak_gib(device), "decoder_params": params}


def table(results: dict) -> str:
    lines = [f"{results['device_name']} ({results['device']}), torch {results['torch']}, transformers "
             f"{results['transformers']}; matmul measured {results['matmul_tflops']:.3g} TFLOP/s "
             f"({'float32' if results['device'] == 'cpu' else 'bf16'}; float32 {results['matmul_float32_tflops']:.3g}), "
             f"bf16 datasheet {results['datasheet_tflops'] or '-'}",
             f"{'featurizer':<14}{'batch tok':>10}{'tokens/s':>12}{'MFU meas':>10}{'MFU sheet':>10}"
             f"{'dec-only':>10}{'naive':>10}{'x naive':>9}{'peak GiB':>10}"]
    for entry in results["featurizer"]:
        for run in entry["runs"]:
            sheet = f"{run['mfu_datasheet']:.1%}" if run["mfu_datasheet"] is not None else "-"
            lines.append(f"{entry['model']:<14}{run['batch_tokens']:>10}{run['tokens_per_s']:>12,}"
                         f"{run['mfu_measured']:>10.1%}{sheet:>10}{run['decoder_only_mfu_measured']:>10.1%}"
                         f"{entry['naive_loop_tokens_per_s']:>10,}"
                         f"{run['tokens_per_s'] / entry['naive_loop_tokens_per_s']:>9.1f}{str(run['peak_gpu_gib']):>10}")
    lines.append(f"{'gradients':<14}{'loop rows/s':>12}{'batched':>10}{'x loop':>8}{'cos min':>10}{'features':>10}")
    for entry in results["gradients"]:
        lines.append(f"{entry['model']:<14}{entry['loop_rows_per_s']:>12.2f}{entry['batched_rows_per_s']:>10.2f}"
                     f"{entry['speedup']:>8.2f}{entry['cosine_min']:>10.6f}{entry['features_rows_per_s']:>10.2f}")
    parity = results["parity"]
    lines.append(f"parity bf16 {parity['device']} vs float32 cpu: min per-layer cosine {parity['cosine_min']:.6f}, "
                 f"NAIT top-10 % overlap {parity['nait_top10_overlap']:.2f}")
    tune = results["finetune"]
    lines.append(f"LoRA fine-tuning {tune['model']}: {tune['tokens_per_s']:,} tokens/s")
    for entry in results["featurizer"] + results["gradients"]:
        if "bounded_by" in entry:
            lines.append(f"below target ({entry['model']}): {entry['bounded_by']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny config on whatever device: the smoke run")
    parser.add_argument("--sizes", nargs="+", choices=[s for s in SHAPES if s != "tiny"],
                        default=["smollm2-135m", "llama-1b", "llama-8b"])
    parser.add_argument("--finetune-size", default="llama-1b")
    parser.add_argument("--device", default="auto", help="auto: cuda when torch sees a GPU, else cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    args = parser.parse_args(argv)

    import torch
    import transformers

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    sizes = ["tiny"] if args.tiny else args.sizes
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    rates = {"measured": matmul_rate(device, device == "cpu"), "measured_float32": matmul_rate(device, True),
             "datasheet": datasheet_rate(name)}
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device,
               "device_name": name, "torch": torch.__version__, "transformers": transformers.__version__,
               "matmul_tflops": rates["measured"] / 1e12, "matmul_float32_tflops": rates["measured_float32"] / 1e12,
               "datasheet_tflops": rates["datasheet"] / 1e12 if rates["datasheet"] else None,
               "targets": {"featurizer_mfu": TARGET_MFU, "gradient_speedup": TARGET_SPEEDUP,
                           "gradient_cosine": TARGET_COSINE},
               "featurizer_spec_default": asdict(FeaturizerSpec()), "featurizer": [], "gradients": []}
    for shape in sizes:
        started = time.perf_counter()
        results["featurizer"].append(measure_featurizer(shape, device, rates, args.tiny))
        if shape in GRADIENT_ROWS:
            results["gradients"].append(measure_gradients(shape, device, rates["measured_float32"]))
        print(f"{shape}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    # The smoke run keeps rows short: bf16 matmuls on a CPU without bf16 units are slow.
    results["parity"] = measure_parity(device, PROMPT_TOKENS + 40 if args.tiny else ROW_TOKENS)
    results["finetune"] = measure_finetune("tiny" if args.tiny else args.finetune_size, device, 3 if args.tiny else 20)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
