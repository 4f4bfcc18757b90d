"""Offline diagnostics of the NAIT variants on a featurized store, side by side (selection-quality.md §2.3).

    NAIT_STORE_DIR=<store> .venv/bin/python bench/nait_variants.py [--budget 0.1]

Scores every capability with each variant from the stored features alone (nothing is written to the
lake), takes the top ceil(r·N) per capability and reports, per variant and capability: Spearman of
the score with response length, mean length of the subset ÷ the pool's, overlap with longest-k,
enrichment of the capability's in-domain-like source over its base rate (math: flan_cot/gsm8k, code:
code_alpaca), and the mean Jaccard overlap between distinct capabilities' subsets; then whether the
variant passes the gates (|ρ| ≤ 0.3, ratio 0.8–1.25, enrichment ≥ 2 on math and code, Jaccard ≤ 0.3).
Prints a table, the top 10 math rows of the best-passing variant, and writes bench/results/nait_variants.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
IN_DOMAIN_SOURCE = {"math": "flan_cot/gsm8k", "code": "code_alpaca_2k"}
VARIANTS = {
    "nait (published)": ("nait", {}),
    "nait zscore": ("nait", {"aggregation": "zscore"}),
    "nait_c contrastive": ("nait_c", {}),
    "nait_c uniform layers": ("nait_c", {"layer_weights": "uniform"}),
    "nait_c pca": ("nait_c", {"direction": "pca"}),
    "nait_c lda": ("nait_c", {"direction": "lda"}),
    "nait_c not cleaned": ("nait_c", {"clean": False}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.1)
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from nait_pipeline.lib.io.layout import LakeLayout
    from nait_pipeline.lib.io.settings import Settings
    from nait_pipeline.lib.methods import scorers
    from nait_pipeline.lib.features.forward import read_pool_store
    from nait_pipeline.lib.methods.base import make_params, pool_groups
    from nait_pipeline.lib.selection import policies as selection
    from nait_pipeline.lib.selection.diagnostics import diagnose

    layout = LakeLayout(Settings.from_env().lake_dir)
    capabilities = sorted(p.stem for p in layout.directions("x").parent.glob("*.parquet") if not p.stem.startswith("_"))
    pool = pq.read_table(layout.pool_examples, columns=["example_id", "output", "instruction"],
                         filters=[("status", "=", "kept")])
    text = {r["example_id"]: r for r in pool.to_pylist()}
    results, tops = {}, {}
    for label, (scorer_name, values) in VARIANTS.items():
        scorer = scorers()[scorer_name]
        params = make_params(scorer.params, values)
        store, _ = read_pool_store(layout, scorer.pool_vectors, scorer.pool_scalars)
        ids = store.ids
        lengths = np.array([len(text[i]["output"]) for i in ids], float)
        sources = pool_groups(layout, ids)
        k = selection.budget(len(ids), args.budget)
        started = time.perf_counter()
        rows, chosen = {}, {}
        for capability in capabilities:
            target, _ = scorer.load_target(layout, capability, params)
            scored = scorer.score(store, target, params)
            picked = selection.top_k(ids, scored.scores, k)
            found = diagnose(ids, lengths, sources, picked, scored.scores)
            chosen[capability] = set(picked)
            source = IN_DOMAIN_SOURCE.get(capability)
            rows[capability] = {"spearman_length": found.spearman_length, "length_ratio": found.length_ratio,
                                "overlap_longest": found.overlap_longest,
                                "enrichment": found.enrichment.get(source) if source else None,
                                **({"separable_layers": scored.notes["separable_layers"]}
                                   if "separable_layers" in scored.notes else {})}
            if capability == "math":
                tops[label] = [(ids[i], sources[i], text[ids[i]]["instruction"][:70]) for i in picked[:10]]
        jaccard = [len(chosen[a] & chosen[b]) / len(chosen[a] | chosen[b])
                   for a, b in itertools.combinations(capabilities, 2)]
        gates = {
            "length": all(abs(r["spearman_length"] or 0) <= 0.3 and 0.8 <= r["length_ratio"] <= 1.25
                          for r in rows.values()),
            "enrichment": all((rows[c]["enrichment"] or 0) >= 2 for c in IN_DOMAIN_SOURCE if c in rows),
            "specificity": max(jaccard) <= 0.3,
        }
        results[label] = {"capabilities": rows, "mean_jaccard": round(float(np.mean(jaccard)), 3),
                          "max_jaccard": round(float(max(jaccard)), 3), "gates": gates,
                          "seconds": round(time.perf_counter() - started, 1)}

    print(f"pool {len(ids)} rows, top {k} per capability; ρ = Spearman(score, response chars), "
          "len = subset/pool mean length, enr = in-domain source enrichment (math: flan_cot/gsm8k, code: code_alpaca)")
    header = f"{'variant':<24}" + "".join(f"{c[:11]:>24}" for c in capabilities) + f"{'Jaccard':>9}  gates"
    print(header)
    for label, result in results.items():
        cells = []
        for capability in capabilities:
            r = result["capabilities"][capability]
            enrichment = f" e{r['enrichment']:.1f}" if r["enrichment"] is not None else ""
            cells.append(f"ρ{(r['spearman_length'] or 0):+.2f} x{r['length_ratio']:.2f}{enrichment}".rjust(24))
        passed = ",".join(g for g, ok in result["gates"].items() if ok) or "-"
        print(f"{label:<24}" + "".join(cells) + f"{result['mean_jaccard']:>9.2f}  {passed}")
    for label in ("nait (published)", "nait_c contrastive"):
        print(f"\ntop 10 math rows, {label}:")
        for example_id, source, instruction in tops[label]:
            print(f"  {source:<22} {instruction}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "nait_variants.json").write_text(json.dumps({"budget": args.budget, "variants": results,
                                                            "top_math": tops}, indent=2))


if __name__ == "__main__":
    main()
