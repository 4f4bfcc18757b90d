"""The cost model: bytes per row from the writers' formats, and runs refused before they start."""

from __future__ import annotations

import pytest

from nait_pipeline.lib.features import capacity
from nait_pipeline.lib.features.reduction import StoreReduction, resolve


def test_bytes_per_row_by_hand():
    full = StoreReduction()
    # SmolLM2-135M at full width: token means and first-token states, 30 x 576 float16 each, a 576-float32
    # RDS+ embedding and the scalars.
    assert capacity.forward_bytes_per_row(30, 576, full) == 2 * 30 * 576 * 2 + 576 * 4 + capacity.ROW_OVERHEAD_BYTES
    # Targets also keep last-token states.
    assert capacity.forward_bytes_per_row(30, 576, full, target=True) == 3 * 30 * 576 * 2 + 576 * 4 + 40
    # The default for an 8B model: every 3rd layer (11) as 4-bit codes, the embedding at 8 bits and at most
    # 40 float16 outlier dimensions per layer and embedding.
    wide = resolve("auto", -1, 0, "auto", 32, 4096)
    assert capacity.forward_bytes_per_row(32, 4096, wide) == 11 * 4096 // 2 + 4096 + 12 * 40 * 2 + 40 <= 28 * 1024
    assert capacity.forward_bytes_per_row(32, 4096, wide, target=True) == 3 * 11 * 4096 * 2 + 4096 * 4 + 40
    every_4th = resolve("every:4", 0, 0, "auto", 32, 4096, 0)
    assert capacity.forward_bytes_per_row(32, 4096, every_4th) == 8 * 4096 * 2 + 4096 * 4 + 40
    projected = resolve("every:4", 256, 0, "auto", 32, 4096, 0)
    assert capacity.forward_bytes_per_row(32, 4096, projected) == 8 * 256 * 2 + 256 * 4 + 40 <= 8 * 1024
    assert capacity.forward_bytes_per_row(32, 4096, full) > 500 * 1024  # what the compact store saves
    assert capacity.gradient_bytes_per_row() == 1024 * 4 * 4 + 40
    assert capacity.score_matrix_bytes(1_000_000, 200) == 800_000_000


def test_throughput_from_flops():
    # 40 % of an H100's 989 TFLOP/s over 2 x 8e9 FLOPs per token and 350 tokens per row.
    rows = capacity.rows_per_gpu_hour(8e9)
    assert rows == pytest.approx(0.4 * 989e12 * 3600 / (2 * 8e9 * 350))
    assert capacity.rows_per_gpu_hour(8e9, flops_per_token_factor=6.0) == pytest.approx(rows / 3)


def test_a_run_that_would_not_fit_is_refused_with_the_numbers(tmp_path):
    with pytest.raises(capacity.CapacityError, match=r"needs ~9.31 GiB of disk, .* has 1.00 GiB free"):
        capacity.require_capacity("featurizing 4 shard(s)", 10 * 10**9, tmp_path, free_disk=2**30, free_memory=2**34)
    with pytest.raises(capacity.CapacityError, match=r"needs ~16.00 GiB of memory, 8.00 GiB is available"):
        capacity.require_capacity("featurizing", 1, tmp_path, 2**34, free_disk=2**30, free_memory=2**33)
    estimate = capacity.require_capacity("featurizing", 10, tmp_path / "not" / "yet", 20)
    assert estimate["estimated_disk_bytes"] == 10 and estimate["free_disk_bytes"] > 0


def test_memory_estimate_counts_weights_arrays_and_one_batch(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    assert capacity.loaded_weight_bytes(tmp_path, "float32") == 2000  # bf16 on disk, float32 once loaded
    memory = capacity.featurize_memory_bytes(100, 2, 8, StoreReduction(), 64, 2000)
    assert memory == 2000 + 100 * (2 * 2 * 8 * 2 + 8 * 4) * 2 + 64 * 3 * 8 * 4 * 2
