"""The current pool table of a lake, read through one object.

Every stage needs some of the same facts about the pool: its version, the kept rows' ids, shards and
content hashes, each shard's input version, a column aligned with scored ids, the texts of some ids.
`PoolView.open(layout)` reads the table's footer once and its small index columns on first use; a
view is cached per file identity (path, inode, mtime, size), so the stages of one process share it and
a re-ingested pool (an atomic rename: a new inode) is never served from a stale view.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from nait_pipeline.lib.io.hashing import sha256_lines
from nait_pipeline.lib.io.lake import file_identity, read_metadata, read_schema, read_table

KEPT = ("status", "=", "kept")
INDEX_COLUMNS = ("example_id", "content_hash", "shard", "source")
# What a model stage renders a row from: a triple, or a conversation's turns (NULL for a triple).
EXAMPLE_COLUMNS = ("instruction", "input", "output", "messages")
# Columns added to the pool table since it was first written: read as NULL from older tables.
LATER_COLUMNS = {"messages": pa.string(), "ingest_flag": pa.string()}


class PoolMissingError(FileNotFoundError):
    """The lake has no pool table yet."""


class PoolView:
    """Kept rows of one version of ``pool/examples.parquet``. Row order is the table's (ingest order);
    readers that need another order sort explicitly."""

    def __init__(self, path: Path):
        self.path = path
        self.metadata = read_metadata(path)
        self.version: str = self.metadata["pool_version"]

    @classmethod
    def open(cls, layout) -> PoolView:
        path = layout.pool_examples
        try:
            identity = file_identity(path)
        except FileNotFoundError:
            raise PoolMissingError(f"{path} is missing: materialize it_pool first") from None
        return _cached_view(path, identity)

    def kept(self, columns: Sequence[str], shard: str | None = None) -> pa.Table:
        """Columns of the kept rows (of one shard, if given), in table order."""
        filters = [KEPT] + ([("shard", "=", shard)] if shard is not None else [])
        return self._read(columns, filters)

    def _read(self, columns: Sequence[str], filters: list) -> pa.Table:
        absent = [c for c in columns if c in LATER_COLUMNS and c not in self.column_names]
        table = read_table(self.path, columns=[c for c in columns if c not in absent], filters=filters)
        for name in absent:
            table = table.add_column(list(columns).index(name), name, pa.nulls(len(table), LATER_COLUMNS[name]))
        return table

    @functools.cached_property
    def column_names(self) -> list[str]:
        return read_schema(self.path).names

    @functools.cached_property
    def index(self) -> pa.Table:
        """Ids, content hashes, shards and sources of the kept rows, in table order (read once)."""
        return self.kept(INDEX_COLUMNS)

    @functools.cached_property
    def ids(self) -> list[str]:
        """Kept ids, sorted: the order score tables and seeded draws use."""
        return sorted(self.index.column("example_id").to_pylist())

    @functools.cached_property
    def shards(self) -> list[str]:
        return sorted(set(self.index.column("shard").to_pylist()))

    @functools.cached_property
    def shard_sizes(self) -> dict[str, int]:
        """Kept rows per shard."""
        return dict(sorted(Counter(self.index.column("shard").to_pylist()).items()))

    @functools.cached_property
    def content_hashes(self) -> dict[str, str]:
        return dict(zip(self.index.column("example_id").to_pylist(), self.index.column("content_hash").to_pylist()))

    @functools.cached_property
    def shard_versions(self) -> dict[str, str]:
        """What each shard's features are computed from: its ids and their texts' hashes, in table order."""
        per_shard: dict[str, tuple[list[str], list[str]]] = {}
        columns = (self.index.column(c).to_pylist() for c in ("example_id", "content_hash", "shard"))
        for example_id, content, shard in zip(*columns):
            ids, hashes = per_shard.setdefault(shard, ([], []))
            ids.append(example_id)
            hashes.append(content)
        return {shard: shard_input_version(ids, hashes) for shard, (ids, hashes) in sorted(per_shard.items())}

    def stale_shards(self, store_path: Callable[[str], Path]) -> list[str]:
        """Shards whose store is missing or was computed from other rows or texts than the pool holds now."""
        stale = []
        for shard, version in self.shard_versions.items():
            path = store_path(shard)
            if not path.exists() or read_metadata(path).get("input_version") != version:
                stale.append(shard)
        return stale

    def aligned(self, ids: Sequence[str], column: str) -> list:
        """A pool column aligned with ``ids``; an id the pool does not keep is an error naming it."""
        table = self.index if column in INDEX_COLUMNS else self.kept(["example_id", column])
        by_id = dict(zip(table.column("example_id").to_pylist(), table.column(column).to_pylist()))
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"{len(missing)} id(s) are not kept rows of pool version {self.version}, e.g. "
                           f"{missing[:5]}")
        return [by_id[i] for i in ids]

    def instructions(self, ids: Sequence[str]) -> list[str]:
        """The instruction of each id for a preview ("" for an id the pool no longer keeps)."""
        found = self._by_id(ids, ["instruction"])
        return [found[i]["instruction"] or "" if i in found else "" for i in ids]

    def rows(self, ids: Sequence[str], columns: Sequence[str] = EXAMPLE_COLUMNS) -> list[dict]:
        """The given columns of each id, in the order of ``ids`` (read with an id filter)."""
        found = self._by_id(ids, columns)
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"{len(missing)} id(s) are not kept rows of pool version {self.version}, e.g. "
                           f"{missing[:5]}")
        return [found[i] for i in ids]

    def _by_id(self, ids: Sequence[str], columns: Sequence[str]) -> dict[str, dict]:
        """Kept rows of ``ids`` by id (read with an id filter, so a preview never loads the pool)."""
        if not ids:
            return {}
        table = self._read(["example_id", *columns], [KEPT, ("example_id", "in", list(ids))])
        return {r["example_id"]: r for r in table.to_pylist()}


def shard_input_version(ids: Sequence[str], content_hashes: Sequence[str]) -> str:
    """What a pool shard's features were computed from: its ids and their texts' hashes, in order."""
    return sha256_lines(f"{i}\t{h}" for i, h in zip(ids, content_hashes))[:16]


@functools.lru_cache(maxsize=4)
def _cached_view(path: Path, identity: tuple) -> PoolView:
    return PoolView(path)
