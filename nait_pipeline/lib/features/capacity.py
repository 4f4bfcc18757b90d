"""What a feature store costs before it is built: bytes per row, store size, memory, GPU-hours.

Store bytes follow from the formats the writers use (forward vectors float16 where they fit, the RDS+
embedding float32, gradient features float32 per checkpoint, LP's perplexities float64), plus a measured
per-row overhead for ids and scalars. Throughput follows from FLOPs: a forward pass costs ~2 P FLOPs per
token (P parameters), a per-example LoRA gradient ~6 P (forward, backward through activations); at a
stated share of the accelerator's dense bf16 peak. The estimates are for planning and for refusing a run
that cannot fit, not for reporting speed: benchmarks measure that.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from nait_pipeline.lib.features.quantize import EMBEDDING_BITS, OUTLIER_SHARE
from nait_pipeline.lib.features.reduction import StoreReduction
from nait_pipeline.lib.io.storage import is_remote

# Ids, token counts, truncation flag and loss per row, measured on the embedded model's shards (zstd).
ROW_OVERHEAD_BYTES = 40
GRADIENT_DIM = 1024
GRADIENT_CHECKPOINTS = 4
SELECTOR_EPOCHS = 3
UTILISATION = 0.40  # share of the dense bf16 peak a well-batched forward reaches (README, "Scaling")
TOKENS_PER_ROW = 350  # an Alpaca-style row rendered in a chat template
H100_BF16_FLOPS = 989e12


@dataclass(frozen=True)
class ModelShape:
    name: str
    num_layers: int
    hidden_size: int
    parameters: float


MODEL_SHAPES = (
    ModelShape("SmolLM2-135M", 30, 576, 135e6),
    ModelShape("Llama-3.2-1B", 16, 2048, 1.24e9),
    ModelShape("Llama-3.1-8B", 32, 4096, 8.03e9),
    ModelShape("Llama-3.1-70B", 80, 8192, 70.6e9),
)


class CapacityError(RuntimeError):
    """A run would need more disk or memory than it has: refused before it starts, with the numbers."""


def forward_bytes_per_row(num_layers: int, width: int, reduction: StoreReduction, target: bool = False) -> int:
    """A forward store row: token means (plus first-token states where kept, plus last-token states for
    targets) at 2 bytes, the RDS+ embedding at 4 bytes, and the scalars; a pool row of a quantized store
    keeps its token means at ``bits`` per value, its embedding at 8 and its outlier dimensions at 16."""
    layers = len(reduction.kept_layers(num_layers))
    stored = reduction.stored_width(width)
    if reduction.bits and not target:
        codes = -(-(layers * stored * reduction.bits) // 8) + stored * max(reduction.bits, EMBEDDING_BITS) // 8
        exact = (layers + 1) * max(1, int(OUTLIER_SHARE * stored)) * 2  # at most: float16 outlier dimensions
        return codes + exact + ROW_OVERHEAD_BYTES
    value_bytes = 4 if reduction.float_width == "float32" else 2
    per_layer_vectors = 1 + (1 if reduction.is_full or target else 0) + (1 if target else 0)
    return layers * stored * value_bytes * per_layer_vectors + stored * 4 + ROW_OVERHEAD_BYTES


def gradient_bytes_per_row(dim: int = GRADIENT_DIM, checkpoints: int = GRADIENT_CHECKPOINTS) -> int:
    return dim * 4 * checkpoints + ROW_OVERHEAD_BYTES


def selector_bytes_per_row(epochs: int = SELECTOR_EPOCHS) -> int:
    return (epochs + 1) * 8 + ROW_OVERHEAD_BYTES


def score_matrix_bytes(pool_rows: int, target_rows: int) -> int:
    """RDS+ / LESS keep an [N, m] float32 score matrix per capability."""
    return pool_rows * target_rows * 4


def featurize_memory_bytes(shard_rows: int, num_layers: int, width: int, reduction: StoreReduction,
                           batch_tokens: int, weight_bytes: int, target: bool = False) -> int:
    """Peak host memory of featurizing one shard: the weights as loaded, the shard's arrays as stored
    (float32 until written), and one batch's hidden states of every layer with their float32 copies."""
    per_row = forward_bytes_per_row(num_layers, width, reduction, target) - ROW_OVERHEAD_BYTES
    arrays = shard_rows * per_row * (2 if reduction.float_width != "float32" else 1)
    batch = batch_tokens * (num_layers + 1) * width * 4 * 2
    return int(weight_bytes + arrays + batch)


def loaded_weight_bytes(model_dir: Path, dtype: str) -> int:
    """Bytes the weights take once loaded in ``dtype`` (from the weight files and the dtype they hold)."""
    import json

    files = [p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin")]
    on_disk = sum(p.stat().st_size for p in files)
    config = json.loads((Path(model_dir) / "config.json").read_text()) if (Path(model_dir) / "config.json").exists() else {}
    stored = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    stored_bytes = 2 if stored in ("bfloat16", "float16") else 4
    return int(on_disk * (4 if dtype == "float32" else 2) / stored_bytes)


def rows_per_gpu_hour(parameters: float, tokens_per_row: int = TOKENS_PER_ROW, flops_per_token_factor: float = 2.0,
                      peak_flops: float = H100_BF16_FLOPS, utilisation: float = UTILISATION) -> float:
    return utilisation * peak_flops * 3600 / (flops_per_token_factor * parameters * tokens_per_row)


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (the total where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def free_disk_bytes(folder: Path) -> int | None:
    """Free bytes on the file system that holds ``folder`` (or its nearest existing parent); None on an
    object store, which has no such limit."""
    if is_remote(folder):
        return None
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def gib(value: float) -> str:
    return f"{value / 2**30:,.2f} GiB"


def require_capacity(what: str, disk_bytes: int, folder: Path, memory_bytes: int = 0,
                     free_disk: int | None = None, free_memory: int | None = None) -> dict:
    """Refuse, naming the numbers, a run whose estimate exceeds the free disk under ``folder`` or the
    available memory; returns the estimate (for the asset's metadata)."""
    free_disk = free_disk_bytes(folder) if free_disk is None else free_disk
    free_memory = available_memory_bytes() if free_memory is None else free_memory
    if free_disk is not None and disk_bytes > free_disk:
        raise CapacityError(f"{what} needs ~{gib(disk_bytes)} of disk, {folder} has {gib(free_disk)} free: "
                            "free space, point store_dir elsewhere, or use a compact store ([forward_store])")
    if memory_bytes > free_memory:
        raise CapacityError(f"{what} needs ~{gib(memory_bytes)} of memory, {gib(free_memory)} is available: "
                            "use smaller shards (it_pool's shard_size), a smaller batch_tokens or a compact store")
    return {"estimated_disk_bytes": int(disk_bytes), "free_disk_bytes": None if free_disk is None else int(free_disk),
            "estimated_memory_bytes": int(memory_bytes), "available_memory_bytes": int(free_memory)}
