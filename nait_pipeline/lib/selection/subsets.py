"""Versioned subsets and their lineage, shared by every selection method."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from nait_pipeline.lib.io.contract import LINEAGE_SCHEMA, SUBSETS_SCHEMA
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import write_parquet
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.provenance import code_commit
from nait_pipeline.lib.models.model_io import ModelInfo
from nait_pipeline.lib.selection import policies as selection


def write_subset(layout: LakeLayout, *, method: str, capability: str, ids: list[str], scores: np.ndarray | None,
                 chosen: list[int], budget_ratio: float, params: dict, pool_version: str, model: ModelInfo,
                 content_hashes: dict[str, str] | None = None) -> dict:
    """Write a subset and its lineage under a version derived from everything that determined it.

    Re-running with the same inputs yields the same version; an existing version is left as it is,
    so its `created_at` records when it was first made. ``scores`` may be None (random subsets).
    ``content_hashes`` (id -> the pool's content hash) records the text each row had when selected.
    """
    selected = [ids[i] for i in chosen]
    digest = selection.selected_ids_sha256(selected)
    version = f"{method}-{capability}-" + sha256_json({
        "method": method, "capability": capability, "params": params, "pool_version": pool_version,
        "model_id": model.model_id, "template_hash": model.template_hash, "selected": digest})[:12]
    if not layout.subset(version).exists():
        write_parquet(pa.Table.from_pylist([
            dict(subset_version=version, method=method, capability=capability, budget_ratio=budget_ratio,
                 rank=rank, example_id=ids[i], score=None if scores is None else float(scores[i]),
                 content_hash=(content_hashes or {}).get(ids[i]))
            for rank, i in enumerate(chosen, start=1)], schema=SUBSETS_SCHEMA), layout.subset(version))
    if not layout.lineage(version).exists():
        write_parquet(pa.Table.from_pylist([dict(
            subset_version=version, pool_version=pool_version, model_id=model.model_id,
            template_hash=model.template_hash, method=method, capability=capability,
            params_json=json.dumps(params, sort_keys=True), n_pool=len(ids), n_selected=len(selected),
            selected_ids_sha256=digest, created_at=datetime.now(timezone.utc), code_commit=code_commit())],
            schema=LINEAGE_SCHEMA),
            layout.lineage(version))
    return {"subset_version": version, "capability": capability, "n_selected": len(selected), "n_pool": len(ids),
            "selected_ids_sha256": digest, "ids": set(selected)}
