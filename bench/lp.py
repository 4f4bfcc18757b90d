"""Learning Percentage's cost beside NAIT's featurization, on the same rows, in one run.

    NAIT_DATA_DIR=../shared/data .venv/bin/python bench/lp.py [--rows 64] [--epochs 3]

On a seeded slice of alpaca_cleaned (the same rows for every stage), rendered in the model's chat
template and truncated at 512 tokens:

- featurize:   the pipeline's forward store (what NAIT, RDS+, perplexity and length read);
- selector:    LP's selector, fully fine-tuned for E epochs (training tokens/s), with E+1 response
               perplexity passes (forward tokens/s), as `selector_trajectories` runs it;
- clusters:    all-MiniLM-L6-v2 embeddings and KMeans, as `selector_clusters` runs them.

Prints a table (seconds, tokens/s, cost relative to featurization) and writes bench/results/lp.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    import torch
    from featurize import _model_dir, seeded_alpaca_rows  # bench/ is on sys.path when run as a script

    from nait_pipeline.lib.features import clusters as cl
    from nait_pipeline.lib.features import featurize as fz
    from nait_pipeline.lib.features.trajectories import SelectorConfig, train_selector
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate

    model_dir = _model_dir()
    rows = seeded_alpaca_rows(args.rows)
    row_ids = [f"row-{i}" for i in range(len(rows))]

    results = {"rows": len(rows), "epochs": args.epochs, "threads": torch.get_num_threads()}
    model = model_io.load_causal_lm(model_dir)
    template = ChatTemplate(model_io.load_tokenizer(model_dir))
    spec = fz.FeaturizerSpec(max_length=512, dtype=fz.resolve_dtype("auto", "cpu"), batch_tokens=2048,
                             keep_last_token=False, hidden_states=fz.HF_OUTPUT)
    started = time.perf_counter()
    features = fz.featurize(model, template, rows, spec, row_ids)
    seconds = time.perf_counter() - started
    tokens = int(features.n_tokens.sum())
    results["featurize"] = {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}
    del model

    config = SelectorConfig(epochs=args.epochs, max_length=512)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        trajectories = train_selector(model_dir, "bench", rows, row_ids, row_ids, config, Path(run_dir) / "run")
        seconds = time.perf_counter() - started
    results["selector"] = {"seconds": round(seconds, 2),
                           "train_tokens_per_s": round(trajectories.train_tokens_per_s, 1),
                           "perplexity_pass_tokens_per_s": round(trajectories.eval_tokens_per_s, 1)}

    started = time.perf_counter()
    embeddings = cl.embed([cl.clustering_text(r["instruction"], r["input"], r["output"]) for r in rows])
    cl.kmeans(embeddings, cl.cluster_count(len(rows), 52))
    results["clusters"] = {"seconds": round(time.perf_counter() - started, 2)}
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    base = results["featurize"]["seconds"]
    lines = [f"{len(rows)} alpaca_cleaned rows, {tokens} tokens, {args.epochs} selector epochs, "
             f"{results['threads']} threads",
             f"{'stage':<34}{'seconds':>9}{'tokens/s':>10}{'x featurize':>13}",
             f"{'featurize (forward store)':<34}{base:>9.1f}{results['featurize']['tokens_per_s']:>10.0f}{1.0:>13.2f}",
             f"{'selector: training':<34}{'':>9}{results['selector']['train_tokens_per_s']:>10.0f}",
             f"{'selector: perplexity passes':<34}{'':>9}{results['selector']['perplexity_pass_tokens_per_s']:>10.0f}",
             f"{'selector total (train + passes)':<34}{results['selector']['seconds']:>9.1f}{'':>10}"
             f"{results['selector']['seconds'] / base:>13.2f}",
             f"{'clusters (MiniLM + KMeans)':<34}{results['clusters']['seconds']:>9.1f}{'':>10}"
             f"{results['clusters']['seconds'] / base:>13.2f}",
             f"peak RSS {results['peak_rss_mb']} MB"]
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lp.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
