"""The Parquet lake: atomic writes (temp file + rename) and reads.

A reader never sees a half-written file: data goes to a temporary file in the same folder,
is flushed to disk, then renamed over the destination in one step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(destination: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it into place on success."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=suffix + ".tmp", dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; analysts must be able to read them
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(destination: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``destination``; swap it into place on success."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_parquet(table: pa.Table, destination: Path, metadata: dict[str, object] | None = None,
                  use_dictionary: bool | list[str] = True, compression: str | dict[str, str] = "zstd") -> Path:
    """Write ``table`` atomically; ``metadata`` is stored as JSON in the Parquet key-value metadata.

    ``use_dictionary`` may name the columns to dictionary-encode: float16 vectors have so few
    distinct values that they would be dictionary-encoded, which makes reading them 4x slower.
    """
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({key.encode(): json.dumps(value, default=str).encode() for key, value in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(destination, ".parquet") as tmp:
        pq.write_table(table, tmp, compression=compression, use_dictionary=use_dictionary)
    return destination


def write_json(value: object, destination: Path) -> Path:
    with atomic_path(destination, ".json") as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str))
    return destination


def read_metadata(path: Path) -> dict[str, object]:
    """The JSON key-value metadata written by :func:`write_parquet`."""
    raw = pq.read_schema(path).metadata or {}
    out: dict[str, object] = {}
    for key, value in raw.items():
        name = key.decode()
        if name == "ARROW:schema":
            continue
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value.decode()
    return out
