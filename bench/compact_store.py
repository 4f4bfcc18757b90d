"""Compact forward stores against the full store: score fidelity and bytes per row, side by side.

    NAIT_STORE_DIR=<a store featurized at full width> .venv/bin/python bench/compact_store.py [--budget 0.1]

The store must hold the forward kind at full width for its pool and every capability (for example
`NAIT_POOL_SAMPLE=1300 nait-pipeline materialize --methods nait nait_c rds_top_b`: ~5,000 rows). For each
setting the compact store is derived from the full one exactly as the featurizer writes it (its `Reducer`,
with the massive-dimension mask of a one-token forward of the model; test_reduction.py shows the featurizer's
own output equals this), written into a lake of its own (pool rows, targets and template prefix linked from the
source store, which is never written to), and NAIT, NAIT-C and RDS+ score every capability through the
pipeline's scorers (NAIT's directions refitted on the compact targets, as `capability_directions` does).
Reports per setting and capability the top-r overlap and the Spearman correlation of the scores with the full
store's, the bytes per pool row measured here, and what the same reduction ratio costs a 32-layer, 4,096-wide
model. Prints a table; writes bench/results/compact_store.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
SCORERS = ("nait", "nait_c", "rds")
SCALARS = ("n_tokens", "n_response_tokens", "full_length", "truncated", "response_loss")
# (label, layers, projected width, massive dims masked, bits): layers as the settings file takes them; the width
# as a fraction of the model's ("/16") or absolute. A random projection's error depends on the projected width,
# not on the ratio (Johnson-Lindenstrauss), so an absolute width measured here is what a wide model at that
# width gets; a ratio measured here is pessimistic for a wide model. ``bits``: the pool shards' token means and
# RDS+ embedding as codes with a codebook per dimension (0: float16); quantization error is per value, so the
# same setting costs a wide model the same share of its full store.
SETTINGS = [
    ("pool first-token state dropped", "all", 0, True, 0),
    ("every 2nd layer", "every:2", 0, True, 0),
    ("every 3rd layer", "every:3", 0, True, 0),
    ("every 4th layer", "every:4", 0, True, 0),
    ("every 4th layer, d/16", "every:4", "/16", True, 0),
    ("every 4th layer, d/4", "every:4", "/4", True, 0),
    ("every 4th layer, 128 dims", "every:4", 128, True, 0),
    ("every 4th layer, 256 dims", "every:4", 256, True, 0),
    ("every 4th layer, 384 dims", "every:4", 384, True, 0),
    ("every 4th layer, 256 dims, unmasked", "every:4", 256, False, 0),
    ("every 2nd layer, 256 dims", "every:2", 256, True, 0),
    ("all layers, 256 dims", "all", 256, True, 0),
    ("all layers, 4 bits", "all", 0, True, 4),
    ("all layers, 2 bits", "all", 0, True, 2),
    ("every 2nd layer, 4 bits", "every:2", 0, True, 4),
    ("every 3rd layer, 4 bits", "every:3", 0, True, 4),
    ("every 4th layer, 8 bits", "every:4", 0, True, 8),
    ("every 4th layer, 4 bits", "every:4", 0, True, 4),
    ("every 4th layer, 2 bits", "every:4", 0, True, 2),
    ("every 5th layer, 2 bits", "every:5", 0, True, 2),
    ("every 3rd layer, 1 bits", "every:3", 0, True, 1),
    ("every 8th layer, 4 bits", "every:8", 0, True, 4),
]
WIDE = {"num_layers": 32, "hidden_size": 4096}


def _link_inputs(source, target) -> None:
    """The compact lake reads the source's pool rows, targets, prefix and model record (symlinks)."""
    for path in (source.pool_examples, source.model_record, source.template_prefix):
        destination = target.root / path.relative_to(source.root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.symlink_to(path)
    selection = source.target_selection("x").parent
    (target.root / selection.relative_to(source.root)).parent.mkdir(parents=True, exist_ok=True)
    (target.root / selection.relative_to(source.root)).symlink_to(selection, target_is_directory=True)


def _write_compact(source, target, reducer, shards: list[str], capabilities: list[str], bits: int) -> int:
    """Every pool shard and target store of ``source`` reduced by ``reducer`` into ``target`` (pool shards
    quantized to ``bits``, as the featurizer writes them); returns the bytes of the pool shards."""
    from nait_pipeline.lib.features.feature_store import read_features, write_features
    from nait_pipeline.lib.features.featurize import Features

    pool_bytes = 0
    jobs = [(source.pool_activations(s), target.pool_activations(s), False) for s in shards]
    jobs += [(source.target_activations(c), target.target_activations(c), True) for c in capabilities]
    for path, destination, is_target in jobs:
        names = ("layer_mean", "first_token", "last_token") if is_target else ("layer_mean",)
        stored = read_features([path], vectors=(*names, "rds_embedding"), scalars=SCALARS)
        vectors = {name: reducer.vectors(stored.vectors[name]) for name in names}
        features = Features(layer_mean=vectors["layer_mean"], first_token=vectors.get("first_token"),
                            last_token=vectors.get("last_token"),
                            rds_embedding=reducer.embedding(stored.vectors["rds_embedding"]),
                            **stored.scalars, layers=reducer.layers, reduction=reducer.metadata())
        kept = ("model_id", "template_hash", "featurizer", "input_version", "store_version", "stats")
        write_features(destination, stored.ids, features, {k: stored.metadata[k] for k in kept if k in stored.metadata},
                       quantize_bits=0 if is_target else bits)
        if not is_target:
            pool_bytes += destination.stat().st_size
    return pool_bytes


def _score_all(layout, capabilities: list[str]) -> dict:
    """{scorer: {capability: scores aligned with the sorted pool ids}}, NAIT's directions fitted first."""
    from nait_pipeline.lib.methods import scorers
    from nait_pipeline.lib.methods.nait.nait_method import write_directions
    from nait_pipeline.lib.methods.run import score_capability

    out: dict = {name: {} for name in SCORERS}
    for capability in capabilities:
        write_directions(layout, capability)
        for name in SCORERS:
            scorer = scorers()[name]
            run = score_capability(layout, scorer, capability, scorer.params())
            ids = run.table.column("example_id").to_pylist()
            if ids != sorted(ids):
                raise RuntimeError(f"{name} scores are not in id order")
            out[name][capability] = run.table.column("score").to_numpy(zero_copy_only=False)
    return out


def _dim(width: int, setting) -> int:
    """The projected width of a setting for a model ``width`` wide (0: full width)."""
    return width // int(setting[1:]) if isinstance(setting, str) else setting


def _wide_bytes(layers: str, setting, bits: int) -> int:
    """Vector bytes per pool row of a 32 x 4,096 model at the same setting (float16 token means, a float32
    RDS+ embedding, or both at ``bits`` per value; first-token states only at full width)."""
    from nait_pipeline.lib.features.reduction import StoreReduction

    dim = _dim(WIDE["hidden_size"], setting)
    reduction = StoreReduction.parse(layers, dim, num_layers=WIDE["num_layers"])
    kept = len(reduction.kept_layers(WIDE["num_layers"]))
    width = reduction.stored_width(WIDE["hidden_size"])
    if bits:
        from nait_pipeline.lib.features.quantize import EMBEDDING_BITS, OUTLIER_SHARE

        exact = (kept + 1) * max(1, int(OUTLIER_SHARE * width)) * 2  # at most, float16
        return kept * width * bits // 8 + width * max(bits, EMBEDDING_BITS) // 8 + exact
    return kept * width * 2 + width * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--only", default="", help="run the settings whose label contains this text")
    parser.add_argument("--out", default=None, help="folder for the compact lakes (default: <store>/compact_bench)")
    args = parser.parse_args()

    import torch

    from nait_pipeline.lib.features.featurize import first_token_massive_dims
    from nait_pipeline.lib.features.reduction import Reducer, StoreReduction
    from nait_pipeline.lib.io.layout import LakeLayout
    from nait_pipeline.lib.io.pool_view import PoolView
    from nait_pipeline.lib.io.settings import Settings
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate
    from nait_pipeline.lib.selection.diagnostics import spearman

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    settings = Settings.from_env()
    source = LakeLayout(settings.lake_dir)
    pool = PoolView.open(source)
    model_info = model_io.ModelInfo.read(source)
    capabilities = sorted(p.stem for p in source.target_activations("x").parent.glob("*.parquet")
                          if not p.stem.startswith("_"))
    shards = pool.shards
    full_bytes = sum(source.pool_activations(s).stat().st_size for s in shards)
    n = len(pool.ids)
    k = math.ceil(args.budget * n)
    print(f"{n} pool rows in {len(shards)} shards, {len(capabilities)} capabilities {capabilities}; "
          f"model {model_info.model_id} ({model_info.num_layers} x {model_info.hidden_size}); top {k} compared",
          flush=True)

    model = model_io.load_causal_lm(Path(model_info.path))
    template = ChatTemplate(model_io.load_tokenizer(Path(model_info.path)))
    first_token = template.tokenize("x", "", "y", 16).input_ids[0]
    masked = first_token_massive_dims(model, first_token)
    del model

    root = Path(args.out) if args.out else settings.store_dir / "compact_bench"
    shutil.rmtree(root, ignore_errors=True)
    reference_layout = LakeLayout(root / "full" / "lake")
    _link_inputs(source, reference_layout)
    for s in shards:
        reference_layout.pool_activations(s).parent.mkdir(parents=True, exist_ok=True)
        reference_layout.pool_activations(s).symlink_to(source.pool_activations(s))
    for c in capabilities:
        reference_layout.target_activations(c).parent.mkdir(parents=True, exist_ok=True)
        reference_layout.target_activations(c).symlink_to(source.target_activations(c))
    started = time.perf_counter()
    reference = _score_all(reference_layout, capabilities)
    print(f"full store: {full_bytes / n:,.0f} bytes per pool row; scored in {time.perf_counter() - started:.1f} s",
          flush=True)

    def top(scores: np.ndarray) -> set[int]:
        finite = np.where(np.isfinite(scores), scores, -np.inf)
        return set(np.argsort(-finite, kind="stable")[:k].tolist())

    rows = []
    for label, layers, setting, mask, bits in SETTINGS:
        if args.only not in label:
            continue
        dim = _dim(model_info.hidden_size, setting)
        reduction = StoreReduction(layers=StoreReduction.parse(layers, 0, num_layers=model_info.num_layers).layers,
                                   dim=dim, mask_massive=mask, bits=bits)
        reducer = Reducer(reduction, model_info.num_layers, model_info.hidden_size, masked)
        layout = LakeLayout(root / label.replace(" ", "_").replace(",", "").replace("/", "over") / "lake")
        _link_inputs(source, layout)
        started = time.perf_counter()
        pool_bytes = _write_compact(source, layout, reducer, shards, capabilities, bits)
        scores = _score_all(layout, capabilities)
        seconds = time.perf_counter() - started
        row = {"setting": label, "layers": layers, "kept_layers": len(reducer.layers), "dim": dim or None,
               "bytes_per_row": round(pool_bytes / n), "wide_model_vector_bytes_per_row": _wide_bytes(layers, setting, bits),
               "massive_dims_masked": mask, "bits": bits or None,
               "seconds": round(seconds, 1), "overlap": {}, "spearman": {}}
        for name in SCORERS:
            for capability in capabilities:
                full, compact = reference[name][capability], scores[name][capability]
                both = np.isfinite(full) & np.isfinite(compact)
                row["overlap"][f"{name}/{capability}"] = round(len(top(full) & top(compact)) / k, 4)
                row["spearman"][f"{name}/{capability}"] = round(float(spearman(full[both], compact[both])), 4)
        row["min_overlap"] = {name: min(v for key, v in row["overlap"].items() if key.startswith(name + "/"))
                              for name in SCORERS}
        rows.append(row)
        print(f"{label:32s} {row['bytes_per_row']:>7,} B/row (x{full_bytes / n / row['bytes_per_row']:.1f} smaller; "
              f"32x4096: {row['wide_model_vector_bytes_per_row'] / 1024:.1f} KiB)  min top-{args.budget:.0%} overlap "
              + "  ".join(f"{name} {row['min_overlap'][name]:.3f}" for name in SCORERS), flush=True)

    print("\nper capability (top-r overlap / Spearman):")
    header = f"{'setting':32s} " + " ".join(f"{n}/{c}"[:14].rjust(14) for n in SCORERS for c in capabilities)
    print(header)
    for row in rows:
        print(f"{row['setting']:32s} " + " ".join(
            f"{row['overlap'][f'{n}/{c}']:.2f}/{row['spearman'][f'{n}/{c}']:.2f}".rjust(14)
            for n in SCORERS for c in capabilities))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "compact_store.json"
    out.write_text(json.dumps({
        "pool_rows": n, "shards": len(shards), "capabilities": capabilities, "budget_ratio": args.budget, "top_k": k,
        "model": {"id": model_info.model_id, "num_layers": model_info.num_layers, "hidden_size": model_info.hidden_size},
        "masked_dims_per_layer": masked.sum(1).tolist(), "full_bytes_per_row": round(full_bytes / n),
        "settings": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
