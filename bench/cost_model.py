"""The memory and cost model behind README "Scaling": bytes per row of every feature kind, store sizes,
GPU-hours and what fits where, for four model widths, full and compact.

    .venv/bin/python bench/cost_model.py

Every number comes from `lib/features/capacity.py` (the writers' formats and FLOP counts), the same model
the featurization assets use to refuse a run that would not fit. Prints markdown tables; writes
bench/results/cost_model.json.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
POOLS = {"Alpaca 52k": 52_002, "Tulu 2 326k": 326_154, "1M": 1_000_000, "Tulu unfiltered 5.8M": 5_800_000}
TARGET_ROWS = 200  # in-domain rows per capability: the [N, m] score matrices
MACHINES = {"laptop 1 TB": 1e12, "node 8 TB NVMe": 8e12, "object storage": float("inf")}


def gib(value: float) -> str:
    if value >= 2**40:
        return f"{value / 2**40:,.1f} TiB"
    if value >= 2**30:
        return f"{value / 2**30:,.1f} GiB"
    return f"{value / 2**20:,.0f} MiB"


def main() -> None:
    from nait_pipeline.lib.features import capacity
    from nait_pipeline.lib.features.reduction import StoreReduction, resolve

    models = []
    for shape in capacity.MODEL_SHAPES:
        # The wide models' default: every 3rd layer as 4-bit codes, measured to keep NAIT, NAIT-C and RDS+ at a
        # top-10 % overlap >= 0.95 (bench/compact_store.py); the projection is <= 8 KiB at 8B but loses NAIT-C, RDS+.
        compact = StoreReduction(layers=tuple(range(shape.num_layers, 0, -3))[::-1], bits=4)
        projected = StoreReduction(layers=tuple(range(shape.num_layers, 0, -4))[::-1], dim=256)
        full_row = capacity.forward_bytes_per_row(shape.num_layers, shape.hidden_size, StoreReduction())
        compact_row = capacity.forward_bytes_per_row(shape.num_layers, shape.hidden_size, compact)
        projected_row = capacity.forward_bytes_per_row(shape.num_layers, shape.hidden_size, projected)
        models.append({
            "model": shape.name, "layers": shape.num_layers, "width": shape.hidden_size,
            "parameters": shape.parameters, "default": resolve("auto", -1, 0, "auto", shape.num_layers,
                                                               shape.hidden_size).describe(shape.num_layers),
            "compact": compact.describe(shape.num_layers),
            "forward_full_bytes_per_row": full_row, "forward_compact_bytes_per_row": compact_row,
            "forward_projected_bytes_per_row": projected_row,
            "gradient_bytes_per_row": capacity.gradient_bytes_per_row(),
            "selector_bytes_per_row": capacity.selector_bytes_per_row(),
            "forward_rows_per_gpu_hour": round(capacity.rows_per_gpu_hour(shape.parameters)),
            "gradient_rows_per_gpu_hour": round(capacity.rows_per_gpu_hour(shape.parameters, flops_per_token_factor=6.0)
                                                / capacity.GRADIENT_CHECKPOINTS),
            "stores": {pool: {"forward_full": rows * full_row, "forward_compact": rows * compact_row,
                              "forward_projected": rows * projected_row,
                              "gradients": rows * capacity.gradient_bytes_per_row(),
                              "score_matrix_per_capability": capacity.score_matrix_bytes(rows, TARGET_ROWS)}
                       for pool, rows in POOLS.items()},
        })

    print("### Bytes per pool row\n")
    print("| model | layers x width | default | forward, full | every 3rd layer, 4-bit | every 4th layer, 256-d | gradients (1,024-d x 4 ckpt) | LP selector |")
    print("|---|---|---|---|---|---|---|---|")
    for m in models:
        print(f"| {m['model']} | {m['layers']} x {m['width']:,} | {m['default']} "
              f"| {m['forward_full_bytes_per_row'] / 1024:,.1f} KiB | {m['forward_compact_bytes_per_row'] / 1024:,.1f} KiB "
              f"| {m['forward_projected_bytes_per_row'] / 1024:,.1f} KiB "
              f"| {m['gradient_bytes_per_row'] / 1024:,.1f} KiB | {m['selector_bytes_per_row']} B |")
    print("\n### Store size by pool\n")
    print("| model | store | " + " | ".join(POOLS) + " |")
    print("|---|---|" + "---|" * len(POOLS))
    for m in models:
        for kind, label in (("forward_full", "forward, full"), ("forward_compact", "forward, every 3rd layer, 4-bit"),
                            ("forward_projected", "forward, every 4th layer, 256-d"),
                            ("gradients", "gradients"), ("score_matrix_per_capability", "N x 200 score matrix")):
            if kind in ("gradients", "score_matrix_per_capability") and m is not models[0]:
                continue  # independent of the model
            print(f"| {m['model'] if kind.startswith('forward') else 'any'} | {label} | "
                  + " | ".join(gib(m["stores"][p][kind]) for p in POOLS) + " |")
    print(f"\n### GPU-hours (H100, {capacity.UTILISATION:.0%} of the dense bf16 peak, "
          f"{capacity.TOKENS_PER_ROW} tokens per row)\n")
    print("| model | forward rows / GPU-hour | gradient rows / GPU-hour (4 ckpt) | "
          + " | ".join(f"{p}: forward / gradients" for p in POOLS) + " |")
    print("|---|---|---|" + "---|" * len(POOLS))
    for m in models:
        hours = [f"{rows / m['forward_rows_per_gpu_hour']:,.1f} h / {rows / m['gradient_rows_per_gpu_hour']:,.0f} h"
                 for rows in POOLS.values()]
        print(f"| {m['model']} | {m['forward_rows_per_gpu_hour']:,} | {m['gradient_rows_per_gpu_hour']:,} | "
              + " | ".join(hours) + " |")
    print("\n### Where the 5.8M-row forward store fits\n")
    print("| model | " + " | ".join(MACHINES) + " |")
    print("|---|" + "---|" * len(MACHINES))
    for m in models:
        cells = []
        for size in MACHINES.values():
            full, compact, projected = (m["stores"]["Tulu unfiltered 5.8M"][k]
                                        for k in ("forward_full", "forward_compact", "forward_projected"))
            cells.append("full" if full <= size else "every 3rd layer, 4-bit" if compact <= size
                         else "projected only" if projected <= size else "no")
        print(f"| {m['model']} | " + " | ".join(cells) + " |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "cost_model.json"
    out.write_text(json.dumps({"utilisation": capacity.UTILISATION, "tokens_per_row": capacity.TOKENS_PER_ROW,
                               "peak_flops": capacity.H100_BF16_FLOPS, "models": models}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
