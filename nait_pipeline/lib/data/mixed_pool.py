"""A seeded mixed pool where selection can matter (selection-quality.md section 3.3, `cpu-mix-2k`):
mostly generic alpaca_cleaned rows plus in-domain-like rows for each capability, with every row whose
instruction equals a prompt of the in-domain sets (the seeded samples `target_sets` draws: GSM8K train
questions are both math targets and flan_cot/gsm8k rows) or of any test item removed.

The pool is written as one Parquet file in the protocol's own input folder (never into the shared
data): ``id, instruction, input, output, source`` plus ``domain``, the capability a row's source is
like (``background`` for the generic rows), which the oracle-by-source reference selects by.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from nait_pipeline.lib.io.hashing import sha256_text
from nait_pipeline.lib.io.lake import read_table


@dataclass(frozen=True)
class MixGroup:
    pool_file: str
    sources: tuple[str, ...]  # the rows' `source` values (dolly rows: "dolly/<category>")
    rows: int
    domain: str


CPU_MIX_2K = (
    MixGroup("alpaca_cleaned.parquet", ("alpaca_cleaned",), 1500, "background"),
    MixGroup("flan_cot.parquet", ("flan_cot/gsm8k",), 125, "math"),
    MixGroup("code_alpaca_2k.parquet", ("code_alpaca_2k",), 125, "code"),
    MixGroup("flan_cot.parquet", ("flan_cot/aqua", "flan_cot/strategyqa", "flan_cot/creak", "flan_cot/sensemaking"),
             125, "reasoning"),
    MixGroup("flan_cot.parquet", ("flan_cot/qasc", "flan_cot/ecqa"), 75, "knowledge"),
    MixGroup("dolly_alpagasus_3k.parquet", ("dolly/open_qa", "dolly/closed_qa", "dolly/general_qa"), 50, "knowledge"),
)


class MixedPoolError(ValueError):
    """A pool file or source the mix names is missing, or too few rows survive deduplication."""


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", (text or "").strip().lower())


def excluded_prompts(targets_dir: Path, target_size: int) -> set[str]:
    """Normalised prompts the pool must not contain: each built-in capability's in-domain set (the
    seeded sample of ``target_size`` rows that `target_sets` selects) and every test item."""
    from nait_pipeline.lib.data import targets
    from nait_pipeline.lib.io.settings import CAPABILITIES

    prompts: set[str] = set()
    for capability in CAPABILITIES:
        for rows in (targets.selection_rows(targets_dir, capability, target_size).rows,
                     targets.evaluation_rows(targets_dir, capability).rows):
            prompts.update(normalise(r["prompt"]) for r in rows)
            # MMLU prompts carry their options; the bare question is what a pool row would repeat
            prompts.update(normalise(r["prompt"].split("\nA. ")[0]) for r in rows if "\nA. " in r["prompt"])
    return prompts


def _source(row: dict) -> str:
    return f"dolly/{row['category']}" if row.get("category") else row["source"]


def build(pools_dir: Path, targets_dir: Path, seed: int = 0, spec: Sequence[MixGroup] = CPU_MIX_2K,
          target_size: int = 256) -> tuple[pa.Table, dict]:
    """The mixed pool and a report per group: candidates, rows dropped as target/test overlaps, taken."""
    excluded = excluded_prompts(targets_dir, target_size)
    records, report, taken_ids = [], {}, set()
    for group in spec:
        path = pools_dir / group.pool_file
        if not path.exists():
            raise MixedPoolError(f"the mix needs {path}")
        table = read_table(path)
        rows = [r for r in table.to_pylist() if _source(r) in group.sources]
        if not rows:
            raise MixedPoolError(f"{group.pool_file} has no rows of {group.sources}")
        clean = [r for r in rows if normalise(r["instruction"]) not in excluded
                 and normalise(f"{r['instruction']} {r['input']}") not in excluded and r["id"] not in taken_ids]
        if len(clean) < group.rows:
            raise MixedPoolError(f"{group.sources}: only {len(clean)} rows after removing target and test prompts, "
                                 f"{group.rows} asked")
        clean.sort(key=lambda r: (sha256_text(f"{seed}:{r['id']}"), r["id"]))
        for row in clean[: group.rows]:
            taken_ids.add(row["id"])
            records.append({"id": row["id"], "instruction": row["instruction"], "input": row["input"] or "",
                            "output": row["output"], "source": _source(row), "domain": group.domain})
        key = f"{group.domain}: {', '.join(group.sources)}"
        report[key] = {"candidates": len(rows), "dropped_overlap": len(rows) - len(clean), "taken": group.rows}
    records.sort(key=lambda r: r["id"])
    return pa.Table.from_pylist(records), report
