"""Target (in-domain) sets per capability, and the held-out test splits kept for evaluation.

Selection may only see ``dev``, ``train`` and ``fewshot`` rows; ``test`` rows are never returned
by :func:`selection_rows`, so no selection method can peek at the evaluation data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nait_pipeline.lib.hashing import sha256_text
from nait_pipeline.lib.settings import CAPABILITIES

SELECTION_SPLITS = ("dev", "train", "fewshot")
EVALUATION_SPLIT = "test"
REQUIRED_COLUMNS = ("id", "capability", "task", "split", "prompt", "answer")
DEFAULT_TARGET_SIZE = 256
SAMPLE_SEED = 0

TARGET_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("capability", pa.string()),
        ("task", pa.string()),
        ("split", pa.string()),
        ("file", pa.string()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("extra_json", pa.string()),
    ]
)


class TargetFileError(ValueError):
    """A target file that cannot be used (unreadable, missing columns, unknown capability)."""


@dataclass(frozen=True)
class TargetRows:
    rows: list[dict]
    skipped: list[dict]  # rows with an empty prompt or answer: reported, never silently dropped
    available: int


def _read_target_file(path: Path) -> list[dict]:
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise TargetFileError(f"{path}: not a readable Parquet file ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise TargetFileError(f"{path}: missing required column(s) {missing}")
    records = table.to_pylist()
    for index, record in enumerate(records):
        if record["capability"] not in CAPABILITIES:
            raise TargetFileError(
                f"{path} row {index}: capability {record['capability']!r} is not one of {list(CAPABILITIES)}"
            )
    return records


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
    rows, skipped = [], []
    for path in sorted(targets_dir.glob("*.parquet")):
        for index, record in enumerate(_read_target_file(path)):
            if record["capability"] != capability or record["split"] not in splits:
                continue
            row = _to_row(record, path)
            empty = [name for name in ("prompt", "answer") if not row[name].strip()]
            if empty:
                skipped.append({"file": path.name, "row_index": index, "example_id": row["example_id"],
                                "reason": f"empty {', '.join(empty)}"})
            else:
                rows.append(row)
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
