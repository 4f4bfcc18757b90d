"""What changed between two versions of a subset, and why.

Rows: added, removed, or kept (with both ranks). Reasons: which of the inputs that determine a version
differ in the two lineages (pool version, model, template, method parameters, code commit), and how
many kept rows had their text changed in between.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

from nait_pipeline.lib.io.contract import SUBSET_DIFFS_SCHEMA
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.lake import read_table

LINEAGE_INPUTS = ("pool_version", "model_id", "template_hash", "code_commit")


def _subset(layout: LakeLayout, version: str) -> dict[str, tuple[int, str | None]]:
    path = layout.subset(version)
    if not path.exists():
        raise FileNotFoundError(f"no subset {version!r} in {path.parent}")
    table = read_table(path)
    hashes = table.column("content_hash").to_pylist() if "content_hash" in table.column_names else [None] * len(table)
    return {i: (r, h) for i, r, h in zip(table.column("example_id").to_pylist(), table.column("rank").to_pylist(), hashes)}


def diff_rows(layout: LakeLayout, old: str, new: str) -> pa.Table:
    before, after = _subset(layout, old), _subset(layout, new)
    rows = []
    for example_id in sorted(set(before) | set(after)):
        old_rank, old_hash = before.get(example_id, (None, None))
        new_rank, new_hash = after.get(example_id, (None, None))
        change = "kept" if old_rank and new_rank else ("added" if new_rank else "removed")
        rows.append(dict(old_version=old, new_version=new, example_id=example_id, change=change, old_rank=old_rank,
                         new_rank=new_rank, rank_change=old_rank - new_rank if change == "kept" else None,
                         text_changed=change == "kept" and None not in (old_hash, new_hash) and old_hash != new_hash))
    rows.sort(key=lambda r: ({"added": 0, "removed": 1, "kept": 2}[r["change"]], r["new_rank"] or r["old_rank"]))
    return pa.Table.from_pylist(rows, schema=SUBSET_DIFFS_SCHEMA)


def _lineage(layout: LakeLayout, version: str) -> dict:
    path = layout.lineage(version)
    if not path.exists():
        raise FileNotFoundError(f"no lineage for subset {version!r}")
    return read_table(path).to_pylist()[0]


def _flat(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else key, item, out)
    else:
        out[prefix] = value
    return out


def explain(layout: LakeLayout, old: str, new: str, rows: pa.Table | None = None) -> dict:
    """Why ``new`` differs from ``old``: the changed lineage inputs and parameters, and the counts."""
    a, b = _lineage(layout, old), _lineage(layout, new)
    changed_inputs = {k: [a.get(k), b.get(k)] for k in LINEAGE_INPUTS if a.get(k) != b.get(k)}
    # The score versions a selection read are recorded with its parameters, but they are inputs (they move
    # with the pool or the features), not choices a person made: reported apart.
    pa_params, pb_params = _flat("", json.loads(a["params_json"]), {}), _flat("", json.loads(b["params_json"]), {})
    changed = {k: [pa_params.get(k), pb_params.get(k)] for k in sorted(set(pa_params) | set(pb_params))
               if pa_params.get(k) != pb_params.get(k)}
    changed_scores = {k: v for k, v in changed.items() if k.startswith("score_versions.")}
    changed_params = {k: v for k, v in changed.items() if k not in changed_scores}
    rows = rows if rows is not None else diff_rows(layout, old, new)
    changes = rows.column("change").to_pylist()
    return {
        "old": old, "new": new,
        "added": changes.count("added"), "removed": changes.count("removed"), "kept": changes.count("kept"),
        "kept_with_new_text": sum(bool(x) for x in rows.column("text_changed").to_pylist()),
        "changed_inputs": changed_inputs,
        "changed_params": changed_params,
        "changed_scores": changed_scores,
    }


def why_line(summary: dict) -> str:
    reasons = [f"{k}: {v[0]} -> {v[1]}" for k, v in summary["changed_inputs"].items()]
    reasons += [f"param {k}: {v[0]} -> {v[1]}" for k, v in summary["changed_params"].items()]
    reasons += [f"scores {k.removeprefix('score_versions.')}: {v[0]} -> {v[1]}"
                for k, v in summary.get("changed_scores", {}).items()]
    return "; ".join(reasons) or "same inputs"


def changed_slots(current_rows: Sequence[dict]) -> list[dict]:
    """Slots of `current_subsets` whose last selection replaced an earlier version."""
    return [r for r in current_rows if r.get("previous_version") and r["previous_version"] != r["subset_version"]]
