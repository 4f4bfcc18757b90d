"""The activation store: per-example forward features as Parquet files in the lake.

One file per pool shard (or per capability for target sets). Vectors are flattened
``[layer, dim]`` lists; they are stored as float16 when every value fits (halving the store), else
float32. The file's metadata records the model id, template hash, featurizer spec and layer list,
so a store is only reused with the model and rendering that made it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nait_pipeline.lib.featurize import Features
from nait_pipeline.lib.lake import read_metadata, write_parquet

FLOAT16_SAFE = 60_000.0  # float16 tops out at 65,504
VECTOR_COLUMNS = ("layer_mean", "first_token", "last_token")
SCALAR_COLUMNS = ("n_tokens", "n_response_tokens", "full_length", "truncated", "response_loss")

EMPTY_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("n_tokens", pa.int32()),
        ("n_response_tokens", pa.int32()),
        ("full_length", pa.int32()),
        ("truncated", pa.bool_()),
        ("response_loss", pa.float64()),
        ("layer_mean", pa.list_(pa.float32())),
        ("first_token", pa.list_(pa.float32())),
        ("rds_embedding", pa.list_(pa.float32())),
    ]
)


def _vector_array(values: np.ndarray, allow_half: bool = True) -> pa.Array:
    """Fixed-size lists: Parquet decodes them about twice as fast as variable lists; DuckDB reads FLOAT[]."""
    flat = values.reshape(len(values), -1)
    dtype = np.float16 if allow_half and np.abs(flat).max(initial=0.0) < FLOAT16_SAFE else np.float32
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.astype(dtype).ravel()), flat.shape[1])


def _to_float32(values: pa.Array) -> np.ndarray:
    import torch

    flat = values.to_numpy(zero_copy_only=False)
    if flat.dtype != np.float16:
        return flat.astype(np.float32, copy=False)
    # torch converts float16 with F16C instructions, about 4x faster than numpy's astype; the
    # np.array copy makes the (read-only, Arrow-owned) buffer writable as torch requires.
    return torch.from_numpy(np.array(flat)).float().numpy()


def write_features(path: Path, ids: Sequence[str], features: Features, metadata: dict) -> Path:
    columns = {
        "example_id": pa.array(list(ids), pa.string()),
        "n_tokens": pa.array(features.n_tokens),
        "n_response_tokens": pa.array(features.n_response_tokens),
        "full_length": pa.array(features.full_length),
        "truncated": pa.array(features.truncated),
        "response_loss": pa.array(features.response_loss, pa.float64(), from_pandas=True),
        "layer_mean": _vector_array(features.layer_mean),
        "first_token": _vector_array(features.first_token),
        # Kept in float32: cosine retrieval (RDS+) on one small vector gains nothing from halving it.
        "rds_embedding": _vector_array(features.rds_embedding, allow_half=False),
    }
    if features.last_token is not None:
        columns["last_token"] = _vector_array(features.last_token)
    shape = {"num_layers": features.layer_mean.shape[1], "hidden_size": features.layer_mean.shape[2]}
    return write_parquet(pa.table(columns), path, {**metadata, **shape, "layers": list(range(1, shape["num_layers"] + 1))},
                         use_dictionary=["example_id"])


@dataclass
class StoredFeatures:
    ids: list[str]
    vectors: dict[str, np.ndarray]  # name -> [N, L, d] (rds_embedding: [N, d]) float32
    scalars: dict[str, np.ndarray]
    metadata: dict


def read_features(paths: Sequence[Path], vectors: Sequence[str] = ("layer_mean",),
                  scalars: Sequence[str] = ()) -> StoredFeatures:
    """Read and concatenate stores (in the given order), checking they share model and template."""
    if not paths:
        raise ValueError("no feature files to read")
    metadata = read_metadata(paths[0])
    key = ("model_id", "template_hash", "featurizer")
    tables = []
    for path in paths:
        other = read_metadata(path)
        if any(other.get(k) != metadata.get(k) for k in key):
            raise ValueError(f"{path} was made with another model, template or featurizer than {paths[0]}")
        tables.append(pq.read_table(path, columns=["example_id", *vectors, *scalars]))
    # Vectors are flattened per file: stores written before vectors became fixed-size lists hold
    # variable-size lists, which Arrow will not concatenate with the newer ones.
    table = pa.concat_tables([t.drop_columns(list(vectors)) for t in tables])
    n_layers, width = int(metadata["num_layers"]), int(metadata["hidden_size"])
    out_vectors = {}
    for name in vectors:
        flat = np.concatenate([_to_float32(t.column(name).combine_chunks().flatten()) for t in tables])
        shape = (len(table), width) if name == "rds_embedding" else (len(table), n_layers, width)
        out_vectors[name] = flat.reshape(shape)
    return StoredFeatures(
        ids=table.column("example_id").to_pylist(),
        vectors=out_vectors,
        scalars={name: table.column(name).to_numpy(zero_copy_only=False) for name in scalars},
        metadata=metadata,
    )
