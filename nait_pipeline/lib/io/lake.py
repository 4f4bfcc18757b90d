"""The Parquet lake: atomic writes and reads, on a local folder or an object store.

A reader never sees a half-written file. Locally, data goes to a temporary file in the same folder,
is flushed to disk, then renamed over the destination in one step, under an exclusive lock on the folder
and only if the destination is still the file it was when the write began (two writers racing one file
cannot both win: the later one gets :class:`~storage.PublishConflict` unless it wrote the same bytes, as on
an object store). On an object store (a ``UPath``
on :mod:`storage`'s manifest filesystem) the temporary file is local and is then published as an
immutable object plus a conditionally-put manifest. Reads go through :func:`read_table`,
:func:`parquet_file` and :func:`read_schema`, which accept either kind of path.
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

from nait_pipeline.lib.io import storage


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(destination: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it into place on success.

    On an object store the temporary file is local and is published on success; the manifest's version
    seen *now* is the one the publication must replace, so a writer that raced this one is refused.
    """
    if storage.is_remote(destination):
        found = destination.fs.read_manifest(destination.path)
        with tempfile.TemporaryDirectory(prefix="nait-publish-") as folder:
            tmp = Path(folder) / destination.name
            yield tmp
            destination.fs.publish_file(destination.path, tmp, found[1] if found else None)
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    # The file this write replaces (None: a new file), held open so that its inode cannot be freed and
    # reused by another file before the check below.
    try:
        seen_fd = os.open(destination, os.O_RDONLY)
    except FileNotFoundError:
        seen_fd = None
    seen = None if seen_fd is None else os.fstat(seen_fd).st_ino
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=suffix + ".tmp", dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; analysts must be able to read them
        with _folder_lock(destination.parent):
            if _inode(destination) != seen and not _same_bytes(destination, tmp):
                raise storage.PublishConflict(
                    f"{destination}: another writer {'created' if seen is None else 'replaced'} it while this one "
                    "was writing; rerun to compute from what is there now")
            os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)
        if seen_fd is not None:
            os.close(seen_fd)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _same_bytes(published: Path, candidate: Path) -> bool:
    from nait_pipeline.lib.io.hashing import sha256_file

    return published.exists() and published.stat().st_size == candidate.stat().st_size and \
        sha256_file(published) == sha256_file(candidate)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on the folder itself (no lock file in the lake): the check and the rename of a
    publication happen as one step for every writer of that folder, across processes."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def atomic_dir(destination: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``destination``; swap it into place on success."""
    if storage.is_remote(destination):
        raise ValueError(f"{destination}: folders of checkpoints are kept on local disk, not in an object store")
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


def _source(path) -> tuple[object, dict]:
    """What pyarrow needs to open a lake path: the path itself, or its key and filesystem."""
    if storage.is_remote(path):
        source, options = path.fs.open_published(path.path)
        return (pa.BufferReader(source) if isinstance(source, bytes) else source), options
    return path, {}


def read_table(path, **kwargs) -> pa.Table:
    where, fs = _source(path)
    return pq.read_table(where, **fs, **kwargs)


def parquet_file(path, **kwargs) -> pq.ParquetFile:
    where, fs = _source(path)
    return pq.ParquetFile(where, **fs, **kwargs)


def read_schema(path) -> pa.Schema:
    where, fs = _source(path)
    return pq.read_schema(where, **fs)


def file_identity(path) -> tuple:
    """Changes whenever the file at ``path`` is replaced: (inode, mtime, size) locally, the published
    object's content hash on an object store."""
    if storage.is_remote(path):
        info = path.fs.info(path.path)
        return (info["object"], info["size"])
    stat = path.stat()
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def read_metadata(path: Path) -> dict[str, object]:
    """The JSON key-value metadata written by :func:`write_parquet`."""
    return _decoded_metadata(read_schema(path))


def read_table_and_metadata(path, columns: list[str]) -> tuple[pa.Table, dict[str, object]]:
    """``columns`` of ``path`` and its :func:`read_metadata`, from one read of the footer (one request less
    per file on an object store)."""
    opened = parquet_file(path)
    return opened.read(columns=columns), _decoded_metadata(opened.schema_arrow)


def _decoded_metadata(schema: pa.Schema) -> dict[str, object]:
    raw = schema.metadata or {}
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
