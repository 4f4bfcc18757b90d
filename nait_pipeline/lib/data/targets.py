"""Target (in-domain) sets per capability, and the held-out test splits kept for evaluation.

Selection may only see ``dev``, ``train`` and ``fewshot`` rows; ``test`` rows are never returned
by :func:`selection_rows`, so no selection method can peek at the evaluation data.

Two kinds of file live in the targets folder:

- benchmark files (the layout of ``../shared/data/targets``): Parquet with ``id, capability, task,
  split, prompt, answer``; one file may feed several capabilities;
- user capability files: ``<name>.jsonl`` or ``<name>.parquet`` without a ``capability`` column, whose
  rows have ``prompt``/``answer`` or ``instruction``/``input``/``output``, optionally ``id``, ``task``
  and ``split``. The file name is the capability. Rows with ``split == "test"`` and the rows of an
  optional ``<name>.test.jsonl`` / ``<name>.test.parquet`` are held out for evaluation; the others
  (no split means ``dev``) are in-domain rows for selection.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from nait_pipeline.lib.io.contract import TARGET_SCHEMA
from nait_pipeline.lib.io.hashing import sha256_text
from nait_pipeline.lib.io.lake import read_schema, read_table

SELECTION_SPLITS = ("dev", "train", "fewshot")
EVALUATION_SPLIT = "test"
REQUIRED_COLUMNS = ("id", "capability", "task", "split", "prompt", "answer")
DEFAULT_TARGET_SIZE = 256
SAMPLE_SEED = 0



class TargetFileError(ValueError):
    """A target file that cannot be used (unreadable, missing columns, unknown capability)."""


@dataclass(frozen=True)
class TargetRows:
    rows: list[dict]
    skipped: list[dict]  # rows with an empty prompt or answer: reported, never silently dropped
    available: int


TARGET_SUFFIXES = (".parquet", ".jsonl")
CAPABILITY_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")
TEST_MARK = ".test"


def _read_records(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        records = []
        with open(path, encoding="utf-8-sig") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TargetFileError(f"{path} line {line_number}: not valid JSON ({exc.msg})") from exc
                if not isinstance(record, dict):
                    raise TargetFileError(f"{path} line {line_number}: a JSON object is expected")
                records.append(record)
        return records
    try:
        return read_table(path).to_pylist()
    except Exception as exc:
        raise TargetFileError(f"{path}: not a readable Parquet file ({exc})") from exc


def _is_benchmark_file(path: Path) -> bool:
    return path.suffix == ".parquet" and "capability" in read_schema(path).names


def _read_target_file(path: Path) -> list[dict]:
    records = _read_records(path)
    missing = [c for c in REQUIRED_COLUMNS if records and c not in records[0]]
    if missing:
        raise TargetFileError(f"{path}: missing required column(s) {missing}")
    for index, record in enumerate(records):
        if not isinstance(record.get("capability"), str) or not CAPABILITY_NAME.match(record["capability"]):
            raise TargetFileError(f"{path} row {index}: capability {record.get('capability')!r} is not a valid "
                                  "name (lower-case letters, digits, '_' or '-')")
    return records


@dataclass(frozen=True)
class UserCapability:
    name: str
    file: Path  # in-domain rows (and any split == "test" rows)
    test_file: Path | None  # held-out rows for evaluation, if the user gave a separate file


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)]


def user_capabilities(targets_dir: Path, problems: list[str] | None = None) -> dict[str, UserCapability]:
    """Capabilities defined by dropping ``<name>.jsonl`` / ``<name>.parquet`` in the targets folder.

    A file that cannot define a capability raises :class:`TargetFileError` naming it; with a
    ``problems`` list, the message is appended there instead and the others are still returned (the
    sensor reports the bad file and keeps serving the good ones)."""
    if not targets_dir.is_dir():
        raise FileNotFoundError(f"target folder {targets_dir} does not exist (set NAIT_DATA_DIR)")

    def refuse(message: str) -> None:
        if problems is None:
            raise TargetFileError(message)
        problems.append(message)

    files = [p for p in sorted(targets_dir.iterdir()) if p.suffix in TARGET_SUFFIXES and not p.name.startswith(".")]
    main: dict[str, Path] = {}
    tests: dict[str, Path] = {}
    clashing: set[str] = set()
    for path in files:
        try:
            if _is_benchmark_file(path):
                continue
        except Exception as exc:  # an unreadable Parquet file: pyarrow raises several types
            refuse(f"{path}: not a readable Parquet file ({exc})")
            continue
        stem = _stem(path)
        is_test = stem.endswith(TEST_MARK)
        name = stem[: -len(TEST_MARK)] if is_test else stem
        if not CAPABILITY_NAME.match(name):
            refuse(f"{path}: {name!r} is not a valid capability name (lower-case letters, digits, '_' or '-', "
                   "starting with a letter): rename the file")
            continue
        into = tests if is_test else main
        if name in into:
            refuse(f"{into[name]} and {path} both define capability {name!r}: keep one of them")
            clashing.add(name)
            continue
        into[name] = path
    for name in sorted(set(tests) - set(main)):
        refuse(f"{tests[name]} is a test file for capability {name!r}, which has no in-domain file "
               f"({name}.jsonl or {name}.parquet)")
    benchmark = benchmark_capabilities(targets_dir)
    for name, path in main.items():
        if name in benchmark:
            refuse(f"{path} defines capability {name!r}, which {benchmark[name]} already provides: rename the file")
            clashing.add(name)
    return {name: UserCapability(name, path, tests.get(name)) for name, path in main.items() if name not in clashing}


def benchmark_capabilities(targets_dir: Path) -> dict[str, str]:
    """Capability -> the first benchmark file that provides rows for it."""
    found: dict[str, str] = {}
    for path in sorted(targets_dir.glob("*.parquet")):
        if path.name.startswith(".") or not _is_benchmark_file(path):
            continue
        column = read_table(path, columns=["capability"]).column("capability")
        for name in sorted(set(column.to_pylist())):
            found.setdefault(name, path.name)
    return found


def discover_capabilities(targets_dir: Path, problems: list[str] | None = None) -> list[str]:
    """Every capability the targets folder defines: the built-in ones in their usual order, other
    benchmark ones by name, then the user's by name (``problems``: see :func:`user_capabilities`)."""
    from nait_pipeline.lib.io.settings import CAPABILITIES

    benchmark = benchmark_capabilities(targets_dir)
    ordered = [c for c in CAPABILITIES if c in benchmark] + sorted(set(benchmark) - set(CAPABILITIES))
    return ordered + sorted(user_capabilities(targets_dir, problems))


def _user_row(record: dict, capability: str, path: Path, index: int) -> dict:
    if "prompt" in record or "answer" in record:
        prompt, answer = record.get("prompt"), record.get("answer")
    else:
        instruction, input_text = record.get("instruction"), record.get("input") or ""
        prompt = instruction if not input_text or not isinstance(instruction, str) else f"{instruction}\n\n{input_text}"
        answer = record.get("output")
    for name, value in (("prompt", prompt), ("answer", answer)):
        if value is not None and not isinstance(value, str):
            raise TargetFileError(f"{path} row {index}: {name} must be text, got {type(value).__name__}")
    known = {"id", "task", "split", "prompt", "answer", "instruction", "input", "output"}
    return dict(
        example_id=str(record.get("id") or f"{capability}-{index:06d}"),
        capability=capability,
        task=str(record.get("task") or capability),
        split=str(record.get("split") or "dev"),
        file=path.name,
        prompt=prompt or "",
        answer=answer or "",
        extra_json=json.dumps({k: v for k, v in record.items() if k not in known}, ensure_ascii=False, default=str),
    )


def _user_records(source: UserCapability, splits: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    rows, skipped = [], []
    seen: dict[str, str] = {}
    for_evaluation = EVALUATION_SPLIT in splits
    files = [(source.file, None)] + ([(source.test_file, EVALUATION_SPLIT)] if source.test_file else [])
    for path, forced_split in files:
        records = _read_records(path)
        if not records:
            raise TargetFileError(f"{path}: the file has no rows")
        for index, record in enumerate(records):
            row = _user_row(record, source.name, path, index)
            if forced_split:
                row["split"] = forced_split
            where = f"{path.name} row {index}"
            if row["example_id"] in seen:
                raise TargetFileError(f"{where}: id {row['example_id']!r} is already used by {seen[row['example_id']]}")
            seen[row["example_id"]] = where
            # Any split but "test" is in-domain data for selection in a user file.
            if (row["split"] == EVALUATION_SPLIT) == for_evaluation:
                _keep_or_skip(row, path, index, rows, skipped)
    return rows, skipped


def _keep_or_skip(row: dict, path: Path, index: int, rows: list[dict], skipped: list[dict]) -> None:
    """Keep a row, or list it in ``skipped`` with its file, row and reason when its prompt or answer is
    empty: reported, never dropped silently."""
    empty = [name for name in ("prompt", "answer") if not row[name].strip()]
    if empty:
        skipped.append({"file": path.name, "row_index": index, "example_id": row["example_id"],
                        "reason": f"empty {', '.join(empty)}"})
    else:
        rows.append(row)


def _to_row(record: dict, path: Path) -> dict:
    extra = {k: v for k, v in record.items() if k not in REQUIRED_COLUMNS}
    return dict(
        example_id=str(record["id"]),
        capability=record["capability"],
        task=str(record["task"] or ""),
        split=record["split"],
        file=path.name,
        prompt=record["prompt"] or "",
        answer=record["answer"] or "",
        extra_json=json.dumps(extra, ensure_ascii=False, default=str),
    )


def _capability_records(targets_dir: Path, capability: str, splits: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    if not targets_dir.is_dir():
        raise FileNotFoundError(f"target folder {targets_dir} does not exist (set NAIT_DATA_DIR)")
    user = user_capabilities(targets_dir)
    if capability in user:
        return _user_records(user[capability], splits)
    rows, skipped = [], []
    for path in sorted(targets_dir.glob("*.parquet")):
        if path.name.startswith(".") or not _is_benchmark_file(path):
            continue
        for index, record in enumerate(_read_target_file(path)):
            if record["capability"] != capability or record["split"] not in splits:
                continue
            _keep_or_skip(_to_row(record, path), path, index, rows, skipped)
    return rows, skipped


def selection_rows(targets_dir: Path, capability: str, size: int | None = DEFAULT_TARGET_SIZE) -> TargetRows:
    """A seeded sample of at most ``size`` in-domain rows of ``capability`` from non-test splits."""
    rows, skipped = _capability_records(targets_dir, capability, SELECTION_SPLITS)
    available = len(rows)
    rows.sort(key=lambda r: (sha256_text(f"{SAMPLE_SEED}:{r['example_id']}"), r["example_id"]))
    if size is not None:
        rows = rows[:size]
    rows.sort(key=lambda r: r["example_id"])
    return TargetRows(rows=rows, skipped=skipped, available=available)


def evaluation_rows(targets_dir: Path, capability: str) -> TargetRows:
    """All ``test`` rows of ``capability``: for evaluation only, never for selection."""
    rows, skipped = _capability_records(targets_dir, capability, (EVALUATION_SPLIT,))
    rows.sort(key=lambda r: r["example_id"])
    return TargetRows(rows=rows, skipped=skipped, available=len(rows))


def to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TARGET_SCHEMA)
