"""Per-example LoRA gradients: the batched path against a batch-1 loop on the same rows, side by side.

    NAIT_DATA_DIR=../shared/data .venv/bin/python bench/gradients.py [--rows 32] [--max-length 512]

On a seeded slice of alpaca_cleaned rendered in the chat template, with a LoRA adapter as the warmup
makes it (r=8, q/k/v/o; its B matrices set non-zero so every matrix has a gradient):

- loop:     one forward + backward per row, the gradients read from ``.grad`` (what a batch-1 LESS run does);
- batched:  one forward + backward per batch of 1, 4 or 16 rows of similar length, each row's gradient
            assembled from hooks (``gradients.per_example_gradients``), as ``pool_gradients`` runs it;
- features: batched gradients + Adam preconditioning + float16 cast + Rademacher projection (dim 1024) +
            normalisation: the whole per-row cost of the store.

Agreement: per-row cosine of batched vs loop gradients. Throughput in rows/s and in achieved FLOP/s with
~4 * P * T FLOPs per row (forward 2PT, backward through frozen weights to the LoRA inputs 2PT; P the
non-embedding parameters, T the row's tokens), beside the LESS paper's ~6 gradients/s for a 7B model on
an A100. Prints a table and writes bench/results/gradients.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--batch-rows", type=int, nargs="+", default=[1, 4, 16], help="rows per backward to try")
    args = parser.parse_args()

    import numpy as np
    import torch
    from featurize import _model_dir, seeded_alpaca_rows  # bench/ is on sys.path when run as a script

    from nait_pipeline.lib.features import gradients as gr
    from nait_pipeline.lib.features.projection import ProjectionSpec, RademacherProjector
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate

    model_dir = _model_dir()
    rows = seeded_alpaca_rows(args.rows)
    template = ChatTemplate(model_io.load_tokenizer(model_dir))
    examples = [template.tokenize(r["instruction"], r["input"], r["output"], args.max_length) for r in rows]
    tokens = sum(len(e.input_ids) for e in examples)
    pad = template.tokenizer.pad_token_id

    config = gr.WarmupConfig()
    model = gr._lora_model(model_io.load_causal_lm(model_dir), config)
    torch.manual_seed(0)
    for name, parameter in gr.lora_parameters(model):
        if "lora_B" in name:
            parameter.data.normal_(0, 0.01)
    model.eval()
    embedding = model.get_input_embeddings().weight.numel()
    non_embedding = sum(p.numel() for p in model.parameters()) - embedding - gr.count_parameters(model)
    results = {"rows": len(rows), "tokens": tokens, "threads": torch.get_num_threads(),
               "lora_params": gr.count_parameters(model), "non_embedding_params": non_embedding}
    rss_before = peak_rss_mb()

    started = time.perf_counter()
    reference = gr.loop_gradients(model, examples, pad)
    loop_seconds = time.perf_counter() - started
    results["loop_peak_rss_mb"] = peak_rss_mb()

    batched_runs = {}
    for rows_per_batch in args.batch_rows:
        batched = torch.zeros_like(reference)

        def keep(indices, gradients):
            batched[indices] = gradients

        started = time.perf_counter()
        gr.per_example_gradients(model, examples, pad, batch_tokens=4096, max_batch_size=rows_per_batch,
                                 on_batch=keep)
        seconds = time.perf_counter() - started
        cosine = torch.nn.functional.cosine_similarity(batched, reference, dim=1)
        batched_runs[rows_per_batch] = {"seconds": round(seconds, 2), "speedup": round(loop_seconds / seconds, 2),
                                        "min_cosine": float(cosine.min()), "peak_rss_mb": peak_rss_mb()}
    results["batched"] = batched_runs
    best = min(batched_runs, key=lambda b: batched_runs[b]["seconds"])
    batched_seconds = batched_runs[best]["seconds"]

    projector = RademacherProjector(ProjectionSpec(gr.count_parameters(model), args.dim))
    exp_avg = [torch.zeros_like(p) for _, p in gr.lora_parameters(model)]
    exp_avg_sq = [torch.full_like(p, 1e-6) for _, p in gr.lora_parameters(model)]
    projector.project(torch.zeros(1, projector.spec.num_params))  # build the cached matrix outside the timing
    started = time.perf_counter()
    features = gr.gradient_features(model, exp_avg, exp_avg_sq, template, rows, [f"r{i}" for i in range(len(rows))],
                                    args.max_length, projector, "adam", batch_rows=best)
    feature_seconds = time.perf_counter() - started
    results["features_peak_rss_mb"] = peak_rss_mb()

    flops = 4 * non_embedding * tokens
    results.update({
        "loop_s": round(loop_seconds, 2), "best_batch_rows": best, "features_s": round(feature_seconds, 2),
        "speedup": round(loop_seconds / batched_seconds, 2),
        "min_cosine": min(run["min_cosine"] for run in batched_runs.values()),
        "loop_rows_per_s": round(len(rows) / loop_seconds, 3), "batched_rows_per_s": round(len(rows) / batched_seconds, 3),
        "features_rows_per_s": round(len(rows) / feature_seconds, 3),
        "batched_gflops_per_s": round(flops / batched_seconds / 1e9, 1),
        "rss_before_mb": rss_before, "zero_rows": int(features.zero_gradient.sum()),
        "unit_norm": bool(np.allclose(np.linalg.norm(features.vectors[~features.zero_gradient], axis=1), 1, atol=1e-4)),
    })
    # LESS (methods.md §2): ~6 gradients/s for a 7B model on an A100; at T tokens a row that is 4 * 7e9 * T FLOPs.
    mean_tokens = tokens / len(rows)
    results["less_7b_a100_gflops_per_s_at_these_lengths"] = round(6 * 4 * 7e9 * mean_tokens / 1e9)
    lines = [f"{len(rows)} alpaca_cleaned rows, {tokens} tokens (mean {mean_tokens:.0f}), LoRA r=8 q/k/v/o "
             f"({results['lora_params']:,} values per gradient), {results['threads']} threads",
             f"{'path':<44}{'seconds':>9}{'rows/s':>9}{'x loop':>8}",
             f"{'batch-1 loop (.grad per row)':<44}{loop_seconds:>9.1f}{len(rows) / loop_seconds:>9.2f}{1.0:>8.2f}",
             *(f"{f'batched, {b} rows per backward (hooks)':<44}{run['seconds']:>9.1f}"
               f"{len(rows) / run['seconds']:>9.2f}{run['speedup']:>8.2f}" for b, run in batched_runs.items()),
             f"{f'features ({best} rows): + Adam, fp16, projection':<44}{feature_seconds:>9.1f}"
             f"{len(rows) / feature_seconds:>9.2f}{loop_seconds / feature_seconds:>8.2f}",
             f"agreement: min per-row cosine {results['min_cosine']:.6f}",
             f"achieved {results['batched_gflops_per_s']} GFLOP/s (4·P·T, P = {non_embedding:,}); LESS on an A100 "
             f"for 7B at ~6 rows/s of this length: ~{results['less_7b_a100_gflops_per_s_at_these_lengths']:,} GFLOP/s",
             "peak RSS (high-water mark after each): loop " + f"{results['loop_peak_rss_mb']} MB, " +
             ", ".join(f"{b} rows {run['peak_rss_mb']} MB" for b, run in batched_runs.items()) +
             f", with projection {results['features_peak_rss_mb']} MB (model loaded: {rss_before} MB)"]
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gradients.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
