"""bench/gpu.py, the GPU measurement, run on the CPU with its tiny config so it cannot rot: it must run
where Dagster, DuckDB and polars are absent (the GPU machine has none of them), produce its JSON, and its
parity and agreement figures must hold. Speeds are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from nait_pipeline.lib.io.settings import PROJECT_ROOT

# Imports of these fail inside the run, as they would on the GPU machine.
ABSENT = ("dagster", "duckdb", "polars")
RUN_WITHOUT = (
    "import runpy, sys\n"
    f"for name in {ABSENT!r}: sys.modules[name] = None\n"
    "sys.argv = ['bench/gpu.py', *sys.argv[1:]]\n"
    "runpy.run_path('bench/gpu.py', run_name='__main__')\n"
)


def test_gpu_bench_smoke_run_without_dagster_duckdb_polars(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "-c", RUN_WITHOUT, "--tiny", "--out", str(out)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "parity bf16 cpu vs float32 cpu" in done.stdout  # the printed table
    results = json.loads(out.read_text())
    assert results["device"] == "cpu" and results["matmul_tflops"] > 0

    [featurizer] = results["featurizer"]
    assert featurizer["model"] == "tiny" and featurizer["row_tokens"] == 512
    for run in featurizer["runs"]:
        assert run["tokens_per_s"] > 0 and run["decoder_only_tokens_per_s"] > 0
        assert 0 < run["mfu_measured"] and run["mfu_datasheet"] is None  # no datasheet rate for a CPU
    assert featurizer["naive_loop_tokens_per_s"] > 0 and featurizer["best"] in featurizer["runs"]

    [gradients] = results["gradients"]
    assert gradients["lora_rank"] == 8 and gradients["lora_params"] > 0
    assert gradients["cosine_min"] >= 0.999  # the batched hooks and the .grad loop agree
    assert gradients["loop_rows_per_s"] > 0 and gradients["batched_rows_per_s"] > 0
    ratio = gradients["batched_rows_per_s"] / gradients["loop_rows_per_s"]
    assert abs(gradients["speedup"] - ratio) <= 0.01 * ratio + 0.01  # the speed-up is of these two rates
    if gradients["speedup"] < results["targets"]["gradient_speedup"]:
        assert gradients["bounded_by"]  # a missed target says what bounds it

    parity = results["parity"]
    assert len(parity["cosine_per_layer_min"]) == parity["model"]["num_hidden_layers"]
    assert parity["cosine_min"] >= 0.999 and parity["nait_top10_overlap"] >= 0.95 and parity["passes"]
    assert results["finetune"]["tokens_per_s"] > 0 and results["finetune"]["steps"] == 3
