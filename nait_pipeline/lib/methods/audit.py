"""Export subsets for training frameworks, and dump everything a selection consumed and produced.

A dump holds plain .npy/.json/.jsonl files and a ``manifest.json`` that says what each one is, so a
selection can be re-run or audited with NumPy alone, outside the pipeline.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from nait_pipeline.lib.features.feature_store import read_features
from nait_pipeline.lib.io.lake import atomic_path, read_metadata, read_table, write_json, write_parquet
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.data.conversation import example_record
from nait_pipeline.lib.io.pool_view import EXAMPLE_COLUMNS, PoolView
from nait_pipeline.lib.methods.base import pool_groups
from nait_pipeline.lib.methods.dump import Dump
from nait_pipeline.lib.models.template import row_messages

EXPORT_FORMATS = ("alpaca", "chat", "parquet")


SUBSET_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ChangedSubsetError(ValueError):
    """The pool no longer holds a subset's rows as they were when it was selected."""


def subset_rows(layout: LakeLayout, subset_version: str, allow_changed: bool = False) -> pa.Table:
    """The subset's rows in rank order, joined with their pool text.

    Refuses (:class:`ChangedSubsetError`) when a selected row left the pool or its text changed since
    the selection, unless ``allow_changed``: an older version must never go out with newer texts."""
    if not SUBSET_NAME.match(subset_version) or subset_version.startswith("."):
        raise ValueError(f"{subset_version!r} is not a subset version name (letters, digits, '-', '_', '.')")
    path = layout.subset(subset_version)
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.parquet") if not p.name.startswith("_"))
        raise FileNotFoundError(f"no subset {subset_version!r}; available: {available}")
    subset = read_table(path).sort_by("rank")
    if "content_hash" not in subset.column_names:  # written before content hashes were recorded
        subset = subset.append_column("content_hash", pa.nulls(len(subset), pa.string()))
    pool = PoolView.open(layout).kept(["example_id", *EXAMPLE_COLUMNS, "source", "content_hash"])
    pool = pool.rename_columns([*pool.column_names[:-1], "pool_content_hash"])
    joined = subset.join(pool, "example_id", join_type="left outer").sort_by("rank")
    rows = joined.select(["example_id", "instruction", "content_hash", "pool_content_hash"]).to_pylist()
    gone = [r["example_id"] for r in rows if r["instruction"] is None]
    changed = [r["example_id"] for r in rows if r["instruction"] is not None and r["content_hash"] is not None
               and r["content_hash"] != r["pool_content_hash"]]
    if gone:
        raise ChangedSubsetError(f"{len(gone)} selected example(s) of {subset_version} are no longer in the pool, "
                                 f"e.g. {gone[:5]}: select again on the current pool")
    if changed and not allow_changed:
        raise ChangedSubsetError(
            f"{len(changed)} selected example(s) of {subset_version} changed text since the selection, e.g. "
            f"{changed[:5]}: select again on the current pool (or export anyway with --allow-changed)")
    return joined.drop_columns(["pool_content_hash"])


def export_subset(layout: LakeLayout, subset_version: str, fmt: str, destination: Path,
                  allow_changed: bool = False) -> int:
    """Write the subset as Alpaca JSONL, chat-messages JSONL or Parquet; returns the row count.

    ``chat`` writes every row as ``messages`` (a conversation's turns exactly as ingested); ``alpaca`` writes
    the triple, and for a conversation its text view with its ``messages`` beside it, so ingesting an export
    again gives the same rows."""
    rows = subset_rows(layout, subset_version, allow_changed)
    if fmt == "parquet":
        write_parquet(rows.select(["rank", "example_id", "score", "source", *EXAMPLE_COLUMNS]),
                      destination, {"subset_version": subset_version})
        return len(rows)
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    with atomic_path(destination, ".jsonl") as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows.to_pylist():
            if fmt == "alpaca":
                record = {"id": row["example_id"], "instruction": row["instruction"], "input": row["input"],
                          "output": row["output"], **example_record(row)}
            else:
                record = {"id": row["example_id"], "messages": row_messages(row)}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(rows)


def dump_selection(layout: LakeLayout, subset_version: str, out_dir: Path, template) -> Path:
    """Dump what any registered method's subset consumed and produced, with a manifest.

    A method with a dump of its own (NAIT) writes it. Every other subset gets: the pool ids in score order,
    what its scorer read (its ``dump_inputs``, in the official code's formats where it has them; else the
    stored vectors and scalars as ``pool_<name>.npy``, per capability the scores, the in-domain ids and
    features and the [N, m] score matrix where the scorer keeps one), pool sources for the random methods,
    what its policy read (the method's ``dump_extra``), the selected ids in rank order, and the recipe."""
    from nait_pipeline.lib.methods import get_method

    if not layout.lineage(subset_version).exists():
        raise FileNotFoundError(f"no lineage for subset {subset_version!r}: see `nait-pipeline subsets`")
    lineage = read_table(layout.lineage(subset_version)).to_pylist()[0]
    method = get_method(lineage["method"])
    if method.dump is not None:
        return method.dump(layout, subset_version, out_dir, template)
    params = json.loads(lineage["params_json"])
    scorer = method.scorer
    dump = Dump(out_dir)
    subset = read_table(layout.subset(subset_version)).sort_by("rank")
    versions = params.get("score_versions") or {}
    notes: dict = {}
    if scorer is None:
        pool_ids = PoolView.open(layout).ids
        dump.json("pool_ids.json", pool_ids, "kept pool ids, sorted: the list the seeded draw ranks")
        dump.json("pool_sources.json", pool_groups(layout, pool_ids), "pool source of each id (balanced random)")
    else:
        for capability, version in versions.items():
            current = read_metadata(layout.scores(scorer.name, capability))["score_version"]
            if current != version:
                raise ValueError(f"{subset_version} was selected from {capability} score version {version}, but "
                                 f"the lake now holds {current}: dump a subset made from the current scores")
        if scorer.dump_inputs is not None:
            notes = scorer.dump_inputs(dump, layout, params, sorted(versions))
        else:
            _dump_store_inputs(dump, layout, scorer, versions)
    if method.dump_extra is not None:
        notes.update(method.dump_extra(dump, layout, params, sorted(versions)))
    dump.json("selected_ids.json", subset.column("example_id").to_pylist(), "selected ids, rank 1 first")
    manifest = {
        "subset_version": subset_version,
        "method": method.name,
        "lineage": {k: str(v) for k, v in lineage.items()},
        "params": params,
        "recipe": method.recipe,
        **({"official": notes} if notes else {}),
        "files": dump.files,
    }
    return write_json(manifest, out_dir / "manifest.json")


def _dump_store_inputs(dump: Dump, layout: LakeLayout, scorer, versions: dict[str, str]) -> None:
    """A forward-store scorer's inputs: the vectors and scalars it read, its scores and matrices, and the
    in-domain vectors of each capability it scored."""
    store, _ = scorer.kind.read_pool(layout, scorer.pool_vectors, scorer.pool_scalars)
    dump.json("pool_ids.json", store.ids, "pool example ids; row i of every pool array is this id")
    stored = {**{name: store.vector(name) for name in scorer.pool_vectors}, **store.scalars}
    for name, values in stored.items():
        dump.array(f"pool_{name}.npy", np.asarray(values), f"{name} of every pool example, from the store")
    for capability in versions:
        table = read_table(layout.scores(scorer.name, capability), columns=["example_id", "score"])
        if table.column("example_id").to_pylist() != store.ids:
            raise ValueError(f"{scorer.name} scores for {capability} no longer match the pool store")
        dump.array(f"scores_{capability}.npy", table.column("score").to_numpy(zero_copy_only=False),
                   f"[N] {scorer.name} score per pool example for {capability} (NaN: no score defined)")
        matrix_path = layout.score_matrix(scorer.name, capability)
        if matrix_path.exists():
            with matrix_path.open("rb") as handle, np.load(handle) as matrix:
                dump.array(f"score_matrix_{capability}.npy", matrix["matrix"],
                           f"[N, m] score of each pool example against each {capability} in-domain example "
                           "(transpose for a queries-by-pool layout)")
                dump.json(f"target_ids_{capability}.json", matrix["target_ids"].tolist(),
                          f"the m in-domain ids of {capability}, column order of the score matrix")
        if scorer.targeted:
            target = read_features([layout.target_activations(capability)], vectors=scorer.pool_vectors)
            for name, values in target.vectors.items():
                dump.array(f"target_{name}_{capability}.npy", values,
                           f"{name} of the {capability} in-domain examples (target_ids order)")
