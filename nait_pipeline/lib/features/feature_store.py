"""The activation store: per-example forward features as Parquet files in the lake.

One file per pool shard (or per capability for target sets). The per-layer vectors (``layer_mean``,
``first_token``, ``last_token``: ``[layer, dim]`` flattened) are stored as one fixed-size binary value
per row, uncompressed, float16 when every value fits (else float32, recorded in the file metadata
under ``vector_dtypes``): Parquet then reads them as one contiguous buffer at memory speed, where a
list column costs a repetition and definition level per value (17,280 per row here). The small
``rds_embedding`` stays a float32 list so SQL can use it. A compact store's pool shards may hold both
as codes instead (``layer_mean_codes``, ``rds_embedding_codes`` and their ``_exact`` outlier dimensions,
``quantize.py``), decoded here for every reader. Stores written by earlier versions (list columns) are
still read. The file's metadata records the model id, template hash, featurizer spec and
layer list, so a store is only reused with the model and rendering that made it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from nait_pipeline.lib.features import quantize
from nait_pipeline.lib.features.quantize import FLOAT16_SAFE
from nait_pipeline.lib.features.featurize import Features
from nait_pipeline.lib.features.reduction import check_same_reduction
from nait_pipeline.lib.io.lake import read_metadata, read_table, write_parquet

VECTOR_COLUMNS = ("layer_mean", "first_token", "last_token")
SCALAR_COLUMNS = ("n_tokens", "n_response_tokens", "full_length", "truncated", "response_loss")
BINARY_VECTORS = ("layer_mean", "first_token", "last_token")
# A quantized vector is stored as two columns: its packed codes and its outlier dimensions' exact values,
# never under its own name, so SQL never reads codes as floats (the view shows the vector as NULL).
CODES_SUFFIX = "_codes"
EXACT_SUFFIX = "_exact"


def _vector_array(values: np.ndarray) -> pa.Array:
    """A float32 fixed-size list (DuckDB reads it as FLOAT[])."""
    flat = values.reshape(len(values), -1).astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])


def _binary_vectors(values: np.ndarray, float_width: str = "auto", name: str = "") -> tuple[pa.Array, str]:
    """One fixed-size binary value per row: float16 when every value fits (``auto``), else float32; or
    the width a store setting forces (float16 refused, naming the column, where a value does not fit)."""
    flat = values.reshape(len(values), -1)
    fits = np.abs(flat).max(initial=0.0) < FLOAT16_SAFE
    if float_width == "float16" and not fits:
        raise ValueError(f"{name}: values up to {np.abs(flat).max():.4g} do not fit float16 (max 65,504): "
                         "store this model at float_width 'auto' or 'float32'")
    dtype = np.float32 if float_width == "float32" or not fits else np.float16
    raw = np.ascontiguousarray(flat.astype(dtype))
    width = raw.shape[1] * raw.itemsize
    array = pa.Array.from_buffers(pa.binary(width), len(raw), [None, pa.py_buffer(raw.tobytes())])
    return array, np.dtype(dtype).name


def _binary_to_numpy(column: pa.ChunkedArray, dtype: str) -> np.ndarray:
    """[n, values per row] view of a fixed-size binary column (no copy when it is one chunk)."""
    array = column.combine_chunks()
    width = array.type.byte_width
    data = array.buffers()[1]
    raw = np.frombuffer(data, dtype=np.uint8, count=len(array) * width, offset=array.offset * width)
    return raw.view(dtype).reshape(len(array), width // np.dtype(dtype).itemsize)


def _column_values(table: pa.Table, name: str, metadata: dict) -> np.ndarray:
    """A vector column as stored ([n, values per row], float16 or float32; a quantized one decoded with the
    file's codebook), whatever layout wrote it."""
    if _codebook(name, metadata):
        block = _coded_block(table, name, metadata)
        return block.decode().reshape(len(block), -1)
    column = table.column(name)
    if pa.types.is_fixed_size_binary(column.type):
        return _binary_to_numpy(column, (metadata.get("vector_dtypes") or {}).get(name, "float16"))
    # Earlier stores: fixed-size or variable-size lists.
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(table), -1)


def _codebook(name: str, metadata: dict) -> dict | None:
    """The codebook of vector ``name`` where the file holds it as codes."""
    return (metadata.get("codebooks") or {}).get(name)


def _coded_block(table: pa.Table, name: str, metadata: dict) -> quantize.CodedBlock:
    """A quantized column as stored: its codes, the file's codebook and its exact outlier dimensions."""
    codebook = _codebook(name, metadata)
    levels, bits = quantize.levels_from_metadata(codebook)
    wide = name == "rds_embedding" or np.abs(levels).max(initial=0.0) >= FLOAT16_SAFE
    exact = _binary_to_numpy(table.column(f"{name}{EXACT_SUFFIX}"), codebook["exact_dtype"]) \
        if codebook["exact_dims"] else None
    return quantize.CodedBlock(packed=_binary_to_numpy(table.column(f"{name}{CODES_SUFFIX}"), "uint8"),
                               levels=levels, bits=bits, exact_dims=list(codebook["exact_dims"]), exact=exact,
                               row_shape=_shape(name, 0, metadata)[1:], dtype=np.float32 if wide else np.float16)


def stored_columns(name: str, metadata: dict) -> list[str]:
    """The file columns holding vector ``name``: itself, or where quantized its codes (and its outlier
    dimensions' exact values)."""
    codebook = _codebook(name, metadata)
    if not codebook:
        return [name]
    return [f"{name}{CODES_SUFFIX}", *([f"{name}{EXACT_SUFFIX}"] if codebook.get("exact_dims") else [])]


def _quantized_vectors(values: np.ndarray, bits: int) -> tuple[pa.Array, pa.Array | None, dict]:
    """A column's packed codes and its outlier dimensions' exact values (float16 where they fit; one
    fixed-size binary value per row each), and the codebook the file records."""
    flat = values.reshape(len(values), -1)
    packed, levels = quantize.quantize(flat, bits)
    exact = quantize.outlier_dims(flat, values.shape[1] if values.ndim == 3 else 1)
    codes = pa.Array.from_buffers(pa.binary(packed.shape[1]), len(packed), [None, pa.py_buffer(packed.tobytes())])
    exact_values, exact_dtype = _binary_vectors(flat[:, exact]) if len(exact) else (None, None)
    return codes, exact_values, {**quantize.levels_to_metadata(levels, bits), "exact_dims": exact.tolist(),
                                 "exact_dtype": exact_dtype}


def write_features(path: Path, ids: Sequence[str], features: Features, metadata: dict,
                   quantize_bits: int = 0) -> Path:
    """Write a store file atomically. ``quantize_bits`` (a compact store's pool shards): the token means and
    the RDS+ embedding as ``bits``-bit codes with a codebook per dimension fitted on this file's rows."""
    columns = {
        "example_id": pa.array(list(ids), pa.string()),
        "n_tokens": pa.array(features.n_tokens),
        "n_response_tokens": pa.array(features.n_response_tokens),
        "full_length": pa.array(features.full_length),
        "truncated": pa.array(features.truncated),
        "response_loss": pa.array(features.response_loss, pa.float64(), from_pandas=True),
    }
    dtypes, codebooks = {}, {}
    if quantize_bits:
        for name in ("layer_mean", "rds_embedding"):
            bits = max(quantize_bits, quantize.EMBEDDING_BITS) if name == "rds_embedding" else quantize_bits
            columns[f"{name}{CODES_SUFFIX}"], exact, codebooks[name] = _quantized_vectors(getattr(features, name), bits)
            if exact is not None:
                columns[f"{name}{EXACT_SUFFIX}"] = exact
            dtypes[name] = f"q{bits}"
    else:
        # Kept a float32 list: one small vector, and SQL can compute cosines on it.
        columns["rds_embedding"] = _vector_array(features.rds_embedding)
    float_width = (features.reduction or {}).get("float_width", "auto")
    for name in BINARY_VECTORS:
        values = getattr(features, name)
        if values is not None and name not in codebooks:
            columns[name], dtypes[name] = _binary_vectors(values, float_width, name)
    shape = {"num_layers": features.layer_mean.shape[1], "hidden_size": features.layer_mean.shape[2]}
    compression = {name: ("none" if name in dtypes or name.endswith((CODES_SUFFIX, EXACT_SUFFIX)) else "zstd")
                   for name in columns}
    layers = features.layers or list(range(1, shape["num_layers"] + 1))
    reduction = {"reduction": features.reduction} if features.reduction else {}
    quantized = {"codebooks": codebooks} if codebooks else {}
    return write_parquet(pa.table(columns), path, {**metadata, **shape, "vector_dtypes": dtypes, "layers": layers,
                                                   **reduction, **quantized},
                         use_dictionary=["example_id"], compression=compression)


@dataclass
class StoredFeatures:
    ids: list[str]
    vectors: dict[str, np.ndarray]  # name -> [N, L, d] (rds_embedding: [N, d]) float32
    scalars: dict[str, np.ndarray]
    metadata: dict


def _check_same_store(paths: Sequence[Path]) -> list[dict]:
    """Each file's metadata, checked to share model, template, featurizer and reduction with the first."""
    if not paths:
        raise ValueError("no feature files to read")
    metadata = [read_metadata(paths[0])]
    key = ("model_id", "template_hash", "featurizer")
    for path in paths[1:]:
        other = read_metadata(path)
        check_same_reduction(metadata[0].get("reduction"), other.get("reduction"), paths[0].name, path.name)
        if any(other.get(k) != metadata[0].get(k) for k in key):
            raise ValueError(f"{path} was made with another model, template or featurizer than {paths[0]}")
        metadata.append(other)
    return metadata


def _shape(name: str, n: int, metadata: dict) -> tuple[int, ...]:
    width = int(metadata["hidden_size"])
    return (n, width) if name == "rds_embedding" else (n, int(metadata["num_layers"]), width)


def read_features(paths: Sequence[Path], vectors: Sequence[str] = ("layer_mean",),
                  scalars: Sequence[str] = ()) -> StoredFeatures:
    """Read and concatenate stores (in the given order) as float32, checking they share model and
    template. For whole pools prefer :class:`PoolStore`, which reads shard by shard."""
    every = _check_same_store(paths)
    metadata = every[0]
    tables = [read_table(path, columns=["example_id", *(c for v in vectors for c in stored_columns(v, meta)), *scalars])
              for path, meta in zip(paths, every)]
    table = pa.concat_tables([t.select(["example_id", *scalars]) for t in tables])
    out_vectors = {}
    for name in vectors:
        flat = np.concatenate([to_float32(_column_values(t, name, meta)) for t, meta in zip(tables, every)])
        out_vectors[name] = flat.reshape(_shape(name, len(table), metadata))
    return StoredFeatures(
        ids=table.column("example_id").to_pylist(),
        vectors=out_vectors,
        scalars={name: table.column(name).to_numpy(zero_copy_only=False) for name in scalars},
        metadata=metadata,
    )


def to_float32(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.float32:
        return values
    import torch

    # torch converts float16 with F16C instructions, about 4x faster than numpy's astype.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only Arrow buffer: torch only reads it
        return torch.from_numpy(values).float().numpy()


class PoolStore:
    """The stored features of many shards, read lazily: ids and scalars at once, vectors either whole
    (small ones) or shard by shard in their stored dtype (the wide per-layer ones), so scoring a pool
    never holds a float32 copy of every layer of every row."""

    def __init__(self, paths: Sequence[Path], scalars: Sequence[str] = ()):
        self.paths = list(paths)
        self.shard_metadata = _check_same_store(self.paths)
        self.metadata = self.shard_metadata[0]
        tables = [read_table(path, columns=["example_id", *scalars]) for path in self.paths]
        table = pa.concat_tables(tables)
        self.ids: list[str] = table.column("example_id").to_pylist()
        self.scalars = {name: table.column(name).to_numpy(zero_copy_only=False) for name in scalars}
        self.shard_sizes = [len(t) for t in tables]
        self.shard_starts = np.cumsum([0, *self.shard_sizes])[:-1].tolist()

    def shard_rows(self, number: int) -> slice:
        """The rows of the pool (of ``ids``, ``scalars``) shard ``number`` holds."""
        return slice(self.shard_starts[number], self.shard_starts[number] + self.shard_sizes[number])

    def blocks(self, name: str, shards: Sequence[int] | None = None,
               coded: bool = False) -> Iterator[np.ndarray | quantize.CodedBlock]:
        """Each shard's ``name`` vectors as stored (float16 or float32), shaped [n, L, d] or [n, d]; only the
        shards numbered in ``shards`` when given, in that order. ``coded``: a quantized shard comes as its
        :class:`~quantize.CodedBlock` (for scorers that take dot products from the codes), not decoded. A
        reader thread loads the next shard while the caller computes on this one, so a store read from disk
        costs the larger of reading and computing, not their sum."""
        from concurrent.futures import ThreadPoolExecutor

        def load(number: int) -> np.ndarray | quantize.CodedBlock:
            path = self.paths[number]
            metadata = read_metadata(path)
            table = read_table(path, columns=stored_columns(name, metadata))  # into memory in the reader thread
            if coded and _codebook(name, metadata):
                return _coded_block(table, name, metadata)
            values = _column_values(table, name, metadata)
            return values.reshape(_shape(name, self.shard_sizes[number], self.metadata))

        order = list(range(len(self.paths)) if shards is None else shards)
        with ThreadPoolExecutor(1, thread_name_prefix="store-reader") as reader:
            pending = reader.submit(load, order[0]) if order else None
            for position in range(len(order)):
                block = pending.result()
                pending = reader.submit(load, order[position + 1]) if position + 1 < len(order) else None
                yield block

    def vector(self, name: str) -> np.ndarray:
        """All rows of ``name`` as float32 (for small vectors such as ``rds_embedding``)."""
        return np.concatenate([to_float32(block) for block in self.blocks(name)])


def row_blocks(store, name: str) -> Iterator[tuple[slice, np.ndarray]]:
    """A store's ``blocks(name)``, each with the rows of the pool (its ``ids``, ``scalars``) it holds."""
    offset = 0
    for block in store.blocks(name):
        yield slice(offset, offset + len(block)), block
        offset += len(block)


def migrate_store_file(path: Path) -> bool:
    """Rewrite a store written with list-typed per-layer vectors in the binary layout (atomically;
    same values, same metadata). Returns False when the file already has the current layout."""
    table = read_table(path)
    old = [n for n in BINARY_VECTORS if n in table.column_names and not pa.types.is_fixed_size_binary(table.column(n).type)]
    if not old:
        return False
    metadata = read_metadata(path)
    dtypes = dict(metadata.get("vector_dtypes") or {})
    for name in old:
        values = _column_values(table, name, metadata)
        array, dtypes[name] = _binary_vectors(values)
        table = table.set_column(table.schema.get_field_index(name), name, array)
    table = table.replace_schema_metadata(None)
    compression = {name: ("none" if name in dtypes else "zstd") for name in table.column_names}
    write_parquet(table, path, {**metadata, "vector_dtypes": dtypes}, use_dictionary=["example_id"],
                  compression=compression)
    return True




