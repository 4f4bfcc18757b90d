"""Pool ingestion: read pool files, validate rows, quarantine bad ones, flag duplicates, shard.

A row is an instruction triple or a conversation (:mod:`nait_pipeline.lib.data.conversation` validates
it and gives the text view stored beside its turns). Every row read ends in exactly one place:
``kept``, ``duplicate`` or ``sampled_out`` in the pool table, or the quarantine table with a reason. File-level problems (unreadable file, missing
required columns) raise :class:`PoolFileError` naming the file, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nait_pipeline.lib.data.conversation import CONVERSATION_FIELDS, RowFieldError, conversation_field, \
    messages_json, parse_conversation
from nait_pipeline.lib.io.contract import POOL_SCHEMA, QUARANTINE_SCHEMA
from nait_pipeline.lib.io.hashing import sha256_lines, sha256_text
from nait_pipeline.lib.io.lake import read_table

POOL_SUFFIXES = (".parquet", ".jsonl", ".json")
REQUIRED_FIELDS = ("instruction", "output")
TEXT_FIELDS = ("instruction", "input", "output")
DEFAULT_MAX_CHARS = 30_000
DEFAULT_SHARD_SIZE = 2048
SAMPLE_SEED = 0



class PoolFileError(ValueError):
    """A pool file that cannot be ingested at all (unreadable, wrong format, missing columns)."""


@dataclass
class IngestResult:
    pool_rows: list[dict] = field(default_factory=list)
    quarantine_rows: list[dict] = field(default_factory=list)
    rows_read: dict[str, int] = field(default_factory=dict)
    file_hashes: dict[str, str] = field(default_factory=dict)  # sha256 of the snapshot each file was read from

    def pool_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.pool_rows, schema=POOL_SCHEMA)

    def quarantine_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.quarantine_rows, schema=QUARANTINE_SCHEMA)

    def counts(self) -> dict[str, int]:
        by_status = {"kept": 0, "duplicate": 0, "sampled_out": 0}
        for row in self.pool_rows:
            by_status[row["status"]] += 1
        return {"read": sum(self.rows_read.values()), "quarantined": len(self.quarantine_rows), **by_status}

    def pool_version(self) -> str:
        """Content hash of what downstream assets consume: the kept rows and their shards."""
        return sha256_lines(
            f"{r['example_id']}\t{r['content_hash']}\t{r['shard']}" for r in self.pool_rows if r["status"] == "kept"
        )[:16]


def pool_name(path: Path) -> str:
    """A partition-key-safe name for a pool file (its stem, lower-cased, [a-z0-9_] only)."""
    return re.sub(r"[^a-z0-9_]+", "_", path.stem.lower()).strip("_") or "pool"


def unsupported_pool_files(pools_dir: Path) -> list[str]:
    """Files in the pools folder that ingestion cannot read (their rows would be lost without a word)."""
    if not pools_dir.is_dir():
        return []
    return sorted(p.name for p in pools_dir.iterdir()
                  if p.is_file() and p.suffix not in POOL_SUFFIXES and not p.name.startswith("."))


def file_changes(previous_files_table: Path, file_hashes: dict[str, str]) -> dict[str, list[str]]:
    """Pool files added, removed or rewritten since the ingest that wrote ``previous_files_table``."""
    before: dict[str, str] = {}
    if previous_files_table.exists():
        table = read_table(previous_files_table)
        if "sha256" in table.column_names:
            before = dict(zip(table.column("file").to_pylist(), table.column("sha256").to_pylist()))
        else:  # written before file hashes were recorded: only additions and removals are known
            before = dict.fromkeys(table.column("file").to_pylist())
    return {
        "added": sorted(set(file_hashes) - set(before)),
        "removed": sorted(set(before) - set(file_hashes)),
        "rewritten": sorted(n for n in set(before) & set(file_hashes) if before[n] and before[n] != file_hashes[n]),
    }


def discover_pool_files(pools_dir: Path) -> list[Path]:
    if not pools_dir.is_dir():
        raise FileNotFoundError(f"pool folder {pools_dir} does not exist (set NAIT_DATA_DIR to a folder with pools/)")
    candidates = sorted(p for p in pools_dir.iterdir() if p.suffix in POOL_SUFFIXES and not p.name.startswith("."))
    unreadable = [p.name for p in candidates if not p.is_file()]
    if unreadable:
        raise PoolFileError(f"pool file(s) {unreadable} in {pools_dir} are not readable files (a dangling link or a "
                            "folder?): fix or remove them; nothing was ingested")
    files = candidates
    if not files:
        raise FileNotFoundError(f"no pool files ({', '.join(POOL_SUFFIXES)}) in {pools_dir}")
    names = [pool_name(p) for p in files]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise PoolFileError(f"pool files in {pools_dir} map to the same pool name(s) {clashes}: rename one of them")
    return files


def content_hash(instruction: str, input_text: str, output: str, messages: str | None = None) -> str:
    """What a row's features are computed from: its triple, or a conversation's canonical turns."""
    if messages is not None:
        return sha256_text(f"messages\x1f{messages}")
    return sha256_text("\x1f".join((instruction, input_text, output)))


SNAPSHOT_TRIES = 3
SETTLE_SECONDS = 2.0  # the it_pool asset's default: a file modified more recently is still being written


def read_snapshot(path: Path, tries: int = SNAPSHOT_TRIES, pause_s: float = 0.2, settle_s: float = 0.0) -> bytes:
    """The file's bytes, read once, from a moment when it was not being written.

    A file overwritten in place while it is read (``cp`` truncates, then writes) would otherwise give
    a mix of old and new rows. The file must be ``settle_s`` old (a writer that pauses mid-file leaves
    a stable but partial file; only quiet time tells it apart), and size and modification time are
    compared before and after the read; a change means a writer was active, so the read is retried
    (after waiting for the file to settle), then refused."""
    import time

    for attempt in range(tries):
        age = time.time() - path.stat().st_mtime
        if age < settle_s:
            time.sleep(settle_s - age)
        before = path.stat()
        if time.time() - before.st_mtime >= settle_s:
            data = path.read_bytes()
            after = path.stat()
            unchanged = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
            if unchanged and len(data) == after.st_size:
                return data
        if attempt + 1 < tries:
            time.sleep(pause_s)
    raise PoolFileError(f"{path}: the file changed while it was being read or within {settle_s:g} s before "
                        f"({tries} tries); ingest again once the copy has finished")


def _read_records(path: Path, data: bytes) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield ``(row_index, record, problem)``; ``problem`` is set for rows that cannot be parsed.
    ``data`` is the file's snapshot (:func:`read_snapshot`)."""
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(pa.BufferReader(data))
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise PoolFileError(f"{path}: not a readable Parquet file ({exc})") from exc
        _require_columns(path, table.column_names)
        for index, record in enumerate(table.to_pylist()):
            yield index, record, None
    elif path.suffix == ".jsonl":
        yield from _read_jsonl(path, data)
    else:
        try:
            records = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PoolFileError(f"{path}: not a valid JSON file ({exc})") from exc
        if not isinstance(records, list):
            raise PoolFileError(f"{path}: a .json pool must hold a list of records, got {type(records).__name__}")
        _require_columns(path, {key for record in records if isinstance(record, dict) for key in record})
        for index, record in enumerate(records):
            yield (index, record, None) if isinstance(record, dict) else (index, None, "record is not a JSON object")


def _read_jsonl(path: Path, data: bytes) -> Iterator[tuple[int, dict | None, str | None]]:
    """Rows of a JSONL file; the row index is the line's 0-based position in the file (blank lines
    count, so it points at the real line), and a UTF-8 byte-order mark is ignored."""
    parsed: list[tuple[int, dict | None, str | None]] = []
    seen_keys: set[str] = set()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for index, raw in enumerate(data.split(b"\n")):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            parsed.append((index, {RAW_LINE: raw.decode("utf-8", "replace")}, "line is not valid UTF-8"))
            continue
        except json.JSONDecodeError as exc:
            parsed.append((index, {RAW_LINE: raw.decode("utf-8")}, f"invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(record, dict):
            parsed.append((index, {RAW_LINE: raw.decode("utf-8")}, "line is not a JSON object"))
            continue
        seen_keys.update(record)
        parsed.append((index, record, None))
    if parsed and not any(problem is None for _, _, problem in parsed):
        raise PoolFileError(f"{path}: no line is a valid JSON object (first problem: {parsed[0][2]})")
    _require_columns(path, seen_keys)
    yield from parsed


def _require_columns(path: Path, columns: Sequence[str] | set[str]) -> None:
    if any(name in columns for name in CONVERSATION_FIELDS):
        return
    missing = [name for name in REQUIRED_FIELDS if name not in columns]
    if missing:
        raise PoolFileError(f"{path}: missing required column(s) {missing} (or a conversation column, one of "
                            f"{list(CONVERSATION_FIELDS)}); found {sorted(columns)}")


def _check_text(record: dict, name: str, max_chars: int) -> tuple[str | None, str | None]:
    """Return ``(value, problem)`` for one text field of a record."""
    value = record.get(name)
    if value is None:
        return ("", None) if name == "input" else (None, "missing")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, "not valid UTF-8"
    if not isinstance(value, str):
        return None, f"not a string ({type(value).__name__})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, "not valid UTF-8 (lone surrogate)"
    if name != "input" and not value.strip():
        return None, "empty"
    if len(value) > max_chars:
        return None, f"longer than {max_chars} characters ({len(value)})"
    return value, None


RAW_LINE = "__raw_line__"  # an unparsable line, kept as text so the quarantine shows what it was


def _raw_preview(record: dict | None, limit: int = 500) -> str:
    if record is None:
        return ""
    text = record[RAW_LINE] if RAW_LINE in record else json.dumps(record, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit] + "..."


def ingest_pools(
    files: Sequence[Path],
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
    sample: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    settle_s: float = 0.0,
) -> IngestResult:
    """Validate, de-duplicate, sample and shard every row of ``files`` (processed in the given order)."""
    result = IngestResult()
    first_seen: dict[tuple[str, str], str] = {}
    seen_ids: set[str] = set()
    for path in files:
        pool = pool_name(path)
        count = 0
        data = read_snapshot(path, settle_s=settle_s)
        result.file_hashes[path.name] = hashlib.sha256(data).hexdigest()
        for row_index, record, problem in _read_records(path, data):
            count += 1
            example_id = _example_id(None if problem else record, pool, row_index)
            quarantine = dict(pool=pool, file=path.name, row_index=row_index, example_id=example_id,
                              raw=_raw_preview(record))
            if problem is not None:
                result.quarantine_rows.append({**quarantine, "field": None, "reason": problem})
                continue
            try:
                values = _row_values(record, max_chars)
            except RowFieldError as problem:
                result.quarantine_rows.append({**quarantine, "field": problem.field, "reason": str(problem)})
                continue
            if example_id in seen_ids:
                result.quarantine_rows.append(
                    {**quarantine, "field": "id", "reason": f"id: {example_id!r} already used by an earlier row"}
                )
                continue
            seen_ids.add(example_id)
            duplicate_of = first_seen.setdefault(values.pop("dedup_key"), example_id)
            source = record.get("source")
            result.pool_rows.append(
                dict(
                    example_id=example_id,
                    pool=pool,
                    source=source if isinstance(source, str) and source else pool,
                    file=path.name,
                    row_index=row_index,
                    **values,
                    status="kept" if duplicate_of == example_id else "duplicate",
                    duplicate_of=None if duplicate_of == example_id else duplicate_of,
                    shard=None,
                )
            )
        result.rows_read[path.name] = count
    _sample_and_shard(result.pool_rows, sample, shard_size)
    return result


def _row_values(record: dict, max_chars: int) -> dict:
    """The pool columns a valid row contributes (text, conversation, hash, flag) and its duplicate key:
    two rows with the same prompt (a triple's instruction and input, a conversation's turns before its
    last answer) are duplicates. Raises naming the field that makes the row unusable."""
    messages = flag = None
    if conversation_field(record) is not None:
        conversation = parse_conversation(record, max_chars)
        values, flag = conversation.text_view(), conversation.flag
        if conversation.is_single_exchange:
            key = (values["instruction"], "")
        else:
            messages = conversation.to_json()
            key = (messages_json(conversation.turns[:-1]), "\x00conversation")
    else:
        values = {}
        for name in TEXT_FIELDS:
            value, problem = _check_text(record, name, max_chars)
            if problem is not None:
                raise RowFieldError(name, problem)
            values[name] = value
        key = (values["instruction"], values["input"])
    hashed = content_hash(values["instruction"], values["input"], values["output"], messages)
    return dict(**values, content_hash=hashed, messages=messages,
                ingest_flag=flag, dedup_key=key)


def _example_id(record: dict | None, pool: str, row_index: int) -> str:
    given = record.get("id") if record else None
    if isinstance(given, str) and given.strip():
        return given.strip()
    return f"{pool}-{row_index:06d}"


def _sample_and_shard(rows: list[dict], sample: int | None, shard_size: int) -> None:
    """Mark rows beyond the seeded per-pool sample, then cut each pool's kept rows into shards.

    The sample keeps the rows with the smallest hash of (seed, id): adding rows to a pool never
    swaps out rows already sampled unless a new row hashes lower. Shards follow file order, so
    appended rows fill the last shard and then add new ones.
    """
    by_pool: dict[str, list[dict]] = {}
    for row in rows:
        if row["status"] == "kept":
            by_pool.setdefault(row["pool"], []).append(row)
    for pool, kept in by_pool.items():
        if sample is not None and len(kept) > sample:
            ranked = sorted(kept, key=lambda r: (sha256_text(f"{SAMPLE_SEED}:{r['example_id']}"), r["example_id"]))
            for row in ranked[sample:]:
                row["status"] = "sampled_out"
            kept = [row for row in kept if row["status"] == "kept"]
        for position, row in enumerate(kept):
            row["shard"] = f"{pool}-{position // shard_size:04d}"
