"""Featurizer benchmark: the naive loop against the pipeline's featurizer, side by side in one run.

    NAIT_DATA_DIR=../shared/data .venv/bin/python bench/featurize.py [--rows 1000] [--targets 64]

Both paths featurize the same alpaca_cleaned rows and the same math in-domain rows, fit their own
NAIT directions and score the pool rows; the table compares speed and the agreement of the scores.

- naive: batch 1, fp32, the full causal LM (LM head on every token) with output_hidden_states.
- fast:  the pipeline's featurizer (length-sorted token-budget batches, decoder only, LM head on
         response tokens only, dtype "auto") followed by the store's float16 round trip, i.e.
         exactly the numbers `nait_scores` reads.
- bf16:  the fast path forced to bfloat16 on the first --bf16-rows rows (the dtype GPUs use).

FLOP accounting (per token, model config): 2 x non-embedding weights (q, k, v, o, MLP) + attention
scores and values 4 x layers x d x (position + 1) / 2 on average + LM head 2 x d x vocab on the
tokens where it runs. Peak: the best of repeated 2048^3 matrix products in bf16 (and fp32) measured
in the same process with the same threads. Each path runs in its own process so peak RSS is its own.
Writes bench/results/featurize.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def seeded_alpaca_rows(count: int) -> list[dict]:
    """A seeded slice of alpaca_cleaned (instruction, input, output), the rows the benchmarks compare on."""
    import pyarrow.parquet as pq

    from nait_pipeline.lib.io.settings import Settings
    from nait_pipeline.lib.selection.policies import seeded_random

    table = pq.read_table(Settings.from_env().data_dir / "pools" / "alpaca_cleaned.parquet")
    ids = [str(i) for i in range(len(table))]
    rows = table.take(sorted(seeded_random(ids, count, 0))).to_pylist()
    return [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in rows]


def _model_dir() -> Path:
    from nait_pipeline.lib.io.settings import Settings
    from nait_pipeline.lib.models import model_io

    settings = Settings.from_env()
    if settings.model:
        return Path(settings.model)
    destination = settings.models_dir / model_io.EMBEDDED_MODEL_NAME
    if not (destination / "config.json").exists():
        model_io.convert_gguf(model_io.embedded_gguf_path(), destination)
    return destination


def _rows(n_pool: int, n_targets: int):
    import pyarrow.parquet as pq

    from nait_pipeline.lib.data import targets
    from nait_pipeline.lib.io.settings import Settings

    data = Settings.from_env().data_dir
    pool = pq.read_table(data / "pools" / "alpaca_cleaned.parquet").slice(0, n_pool).to_pylist()
    target = targets.selection_rows(data / "targets", "math", n_targets).rows
    target_rows = [{"instruction": t["prompt"], "input": "", "output": t["answer"]} for t in target]
    return pool, target_rows


def naive_features(model, template, rows, max_length):
    """Batch 1, full causal LM, output_hidden_states: the loop a first implementation would write."""
    import torch

    n_layers = model.config.num_hidden_layers
    means, firsts, tokens = [], [], 0
    with torch.no_grad():
        for row in rows:
            ids = template.tokenize_row(row, max_length).input_ids
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            hidden = torch.stack(out.hidden_states[1 : n_layers + 1], 0)[:, 0]  # [L, K, d]
            means.append(hidden.mean(1).numpy())
            firsts.append(hidden[:, 0].numpy())
            tokens += len(ids)
    return np.stack(means), np.stack(firsts), tokens


def _worker(path: str, n_pool: int, n_targets: int, max_length: int, queue) -> None:
    import torch

    from nait_pipeline.lib.features import featurize as fz
    from nait_pipeline.lib.features.feature_store import read_features, write_features
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate

    torch.set_num_threads(os.cpu_count() or 1)
    model_dir = _model_dir()
    template = ChatTemplate(model_io.load_tokenizer(model_dir))
    pool, target_rows = _rows(n_pool, n_targets)
    out: dict = {}
    if path == "naive":
        model = model_io.load_causal_lm(model_dir, "float32")
        started = time.perf_counter()
        pool_mean, _, tokens = naive_features(model, template, pool, max_length)
        seconds = time.perf_counter() - started
        target_mean, target_first, _ = naive_features(model, template, target_rows, max_length)
        out.update(pool_mean=pool_mean, target_mean=target_mean, target_first=target_first)
        response_tokens = None
    else:
        dtype = "bfloat16" if path == "bf16" else "auto"
        spec = fz.FeaturizerSpec(max_length=max_length, dtype=fz.resolve_dtype(dtype, "cpu"))
        model = model_io.load_causal_lm(model_dir, spec.dtype)
        ids = [str(i) for i in range(len(pool))]
        started = time.perf_counter()
        features = fz.featurize(model, template, pool, spec, ids)
        seconds = time.perf_counter() - started
        tokens = int(features.n_tokens.sum())
        response_tokens = int(features.n_response_tokens.sum())
        store = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_{os.getpid()}.parquet"
        write_features(store, ids, features, {"model_id": "bench", "template_hash": "bench", "featurizer": {}})
        out["pool_mean"] = read_features([store]).vectors["layer_mean"]
        out["store_bytes_per_example"] = store.stat().st_size / len(pool)
        store.unlink()
        targets = fz.featurize(model, template, target_rows, spec, [str(i) for i in range(len(target_rows))])
        out.update(target_mean=targets.layer_mean, target_first=targets.first_token, dtype=spec.dtype)
    out.update(tokens=tokens, response_tokens=response_tokens, seconds=seconds,
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    queue.put(out)


def run_path(path: str, n_pool: int, n_targets: int, max_length: int) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_worker, args=(path, n_pool, n_targets, max_length, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def measured_peak_gflops(dtype_name: str, size: int = 2048, repeats: int = 5) -> float:
    import torch

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def flops(config, tokens: int, lm_head_tokens: int, mean_length: float) -> float:
    d, layers = config.hidden_size, config.num_hidden_layers
    kv = d * config.num_key_value_heads // config.num_attention_heads
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * config.intermediate_size  # q, o, k, v, gate/up/down
    attention = 4 * layers * d * (mean_length + 1) / 2
    return tokens * (2 * layers * per_layer + attention) + lm_head_tokens * 2 * d * config.vocab_size


def scores(pool_mean, target_mean, target_first):
    from nait_pipeline.lib.methods.nait import nait_math as nait

    directions = nait.fit_directions(nait.drift(target_mean, target_first, None, "R2")).vectors
    return nait.aggregate(nait.layer_projections(pool_mean, directions))


def top_overlap(a: np.ndarray, b: np.ndarray, share: float = 0.1) -> float:
    k = max(1, int(np.ceil(share * len(a))))
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--targets", type=int, default=64)
    parser.add_argument("--bf16-rows", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(_model_dir())
    peaks = {name: measured_peak_gflops(name) for name in ("bfloat16", "float32")}
    naive = run_path("naive", args.rows, args.targets, args.max_length)
    fast = run_path("fast", args.rows, args.targets, args.max_length)
    bf16 = run_path("bf16", args.bf16_rows, args.targets, args.max_length) if args.bf16_rows else None

    mean_length = fast["tokens"] / args.rows
    naive_flops = flops(config, naive["tokens"], naive["tokens"], mean_length)
    fast_flops = flops(config, fast["tokens"], fast["response_tokens"], mean_length)
    naive_scores = scores(naive["pool_mean"], naive["target_mean"], naive["target_first"])
    fast_scores = scores(fast["pool_mean"], fast["target_mean"], fast["target_first"])
    diff = np.abs(naive_scores - fast_scores)
    result = {
        "rows": args.rows,
        "tokens": fast["tokens"],
        "threads": os.cpu_count(),
        "fast_dtype": fast["dtype"],
        "naive_tokens_per_s": naive["tokens"] / naive["seconds"],
        "fast_tokens_per_s": fast["tokens"] / fast["seconds"],
        "speedup": (fast["tokens"] / fast["seconds"]) / (naive["tokens"] / naive["seconds"]),
        "naive_peak_rss_mib": naive["peak_rss_mib"],
        "fast_peak_rss_mib": fast["peak_rss_mib"],
        "measured_peak_gflops_bf16": peaks["bfloat16"],
        "measured_peak_gflops_fp32": peaks["float32"],
        "naive_gflops": naive_flops / naive["seconds"] / 1e9,
        "fast_gflops": fast_flops / fast["seconds"] / 1e9,
        "flop_peak_share": fast_flops / fast["seconds"] / 1e9 / peaks["bfloat16"],
        "flop_peak_share_fp32": fast_flops / fast["seconds"] / 1e9 / peaks["float32"],
        "max_abs_score_diff": float(diff.max()),
        "max_rel_score_diff": float((diff / np.maximum(np.abs(naive_scores), 1e-9)).max()),
        "top10_overlap": top_overlap(naive_scores, fast_scores),
        "store_bytes_per_example": fast["store_bytes_per_example"],
    }
    if bf16:
        n = args.bf16_rows
        bf16_scores = scores(bf16["pool_mean"], bf16["target_mean"], bf16["target_first"])
        result.update(
            bf16_rows=n,
            bf16_tokens_per_s=bf16["tokens"] / bf16["seconds"],
            bf16_top10_overlap=top_overlap(naive_scores[:n], bf16_scores),
            bf16_max_rel_score_diff=float((np.abs(naive_scores[:n] - bf16_scores)
                                           / np.maximum(np.abs(naive_scores[:n]), 1e-9)).max()),
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "featurize.json").write_text(json.dumps(result, indent=2))
    width = max(len(k) for k in result)
    print(f"{'metric':<{width}}  value")
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
