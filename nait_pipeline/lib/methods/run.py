"""Run a registered method's stages on the lake: score the pool for a capability, then select.

Dagster-free; the assets in ``defs/assets/methods.py`` call these two functions and turn what they
return into metadata.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from nait_pipeline.lib.data.decontamination import read_contaminated
from nait_pipeline.lib.features.reduction import check_same_reduction
from nait_pipeline.lib.io.contract import (
    CURRENT_SUBSETS_SCHEMA,
    SUBSET_DIAGNOSTICS_SCHEMA,
    SUBSET_EXPLANATIONS_SCHEMA,
)
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import atomic_path, read_metadata, read_table, write_parquet
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.pool_view import PoolView
from nait_pipeline.lib.methods.base import (
    ALL,
    Method,
    MethodInputError,
    Scorer,
    SelectionInput,
    SelectionOptions,
    params_dict,
    pool_groups,
)
from nait_pipeline.lib.selection import near_duplicates as nd
from nait_pipeline.lib.selection.diagnostics import diagnose
from nait_pipeline.lib.selection.policies import budget, require_finite
from nait_pipeline.lib.models.model_io import ModelInfo
from nait_pipeline.lib.selection.subsets import write_subset


@dataclass
class ScoreRun:
    table: pa.Table
    version: str
    read_seconds: float
    score_seconds: float
    notes: dict


def score_capability(layout: LakeLayout, scorer: Scorer, capability: str, params) -> ScoreRun:
    """Score every pool example for ``capability`` (``all`` for untargeted scorers) from the store
    alone, and write ``scores/<scorer>__<capability>.parquet`` (plus the [N, m] matrix if any)."""
    if not scorer.targeted and capability != ALL:
        raise MethodInputError(f"{scorer.name} scores the pool once for every capability, not for {capability!r}")
    started = time.perf_counter()
    target, target_meta = (None, {})
    if scorer.targeted:
        target, target_meta = scorer.load_target(layout, capability, params)
    pool, pool_version = scorer.kind.read_pool(layout, scorer.pool_vectors, scorer.pool_scalars, f"{scorer.name}_scores")
    if target_meta and pool.metadata["model_id"] != target_meta.get("model_id"):
        raise MethodInputError(
            f"the pool's {scorer.kind.name} features come from {pool.metadata['model_id']} but the {capability} "
            f"target model from {target_meta.get('model_id')}: re-materialize one of them with the same model")
    if target_meta:
        check_same_reduction(pool.metadata.get("reduction"), target_meta.get("reduction"),
                             f"the pool's {scorer.kind.name} store", f"the {capability} target store")
    read_seconds = time.perf_counter() - started
    scored = scorer.score(pool, target, params)
    unscored = scored.unscored if scored.unscored is not None else np.zeros(len(pool.ids), bool)
    require_finite(scored.scores[~unscored], [i for i, u in zip(pool.ids, unscored) if not u])
    score_seconds = time.perf_counter() - started - read_seconds
    values = params_dict(params)
    identity = ({scorer.version_key: target_meta["version"]} if scorer.targeted else {"scorer": scorer.name})
    if "features_version" in pool.metadata:
        identity["features"] = pool.metadata["features_version"]
    version = sha256_json({**identity, "pool": pool_version, **values})[:16]
    n = len(pool.ids)
    columns = {
        "method": [scorer.name] * n, "capability": [capability] * n, "example_id": pool.ids,
        "score": pa.array(np.where(unscored, np.nan, scored.scores), pa.float64(), mask=unscored),
        "score_version": [version] * n, "pool_version": [pool_version] * n,
        "model_id": [pool.metadata["model_id"]] * n,
    }
    columns.update({name: list(values_) for name, values_ in scored.columns.items()})
    table = pa.table(columns)
    write_parquet(table, layout.scores(scorer.name, capability), {
        "score_version": version, "params": values, "pool_version": pool_version,
        "target_version": target_meta.get("version"), "template_hash": pool.metadata.get("template_hash"),
        # NAIT's lineage and dump read the directions version under its historical name.
        **({"directions_version": target_meta["version"]} if scorer.version_key == "directions" else {}),
        "seconds": round(read_seconds + score_seconds, 3), "unscored": int(unscored.sum())})
    if scored.matrix is not None:
        with atomic_path(layout.score_matrix(scorer.name, capability), ".npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, matrix=scored.matrix.astype(np.float32), pool_ids=np.array(pool.ids),
                         target_ids=np.array(scored.matrix_ids), score_version=np.array(version))
    return ScoreRun(table, version, read_seconds, score_seconds, scored.notes)


def _load_matrix(layout: LakeLayout, scorer: Scorer, versions: dict[str, str]):
    def load(capability: str) -> tuple[np.ndarray, list[str]]:
        path = layout.score_matrix(scorer.name, capability)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: materialize {scorer.name}_scores[{capability}]")
        with path.open("rb") as handle, np.load(handle) as stored:
            if str(stored["score_version"]) != versions[capability]:
                raise MethodInputError(f"{path.name} is from another score version than the stored scores: "
                                       f"re-materialize {scorer.name}_scores[{capability}]")
            return stored["matrix"].astype(np.float64), stored["target_ids"].tolist()
    return load


def selection_input(layout: LakeLayout, method: Method, capabilities: list[str]) -> SelectionInput:
    """Scores of every capability the method selects for (or the pool ids, for random methods),
    checked to be on the current pool version."""
    pool = PoolView.open(layout)
    pool_version = pool.version
    scorer = method.scorer
    if scorer is None:
        kept = pool.kept(["example_id", "output"]).sort_by("example_id")
        ids = kept.column("example_id").to_pylist()
        return SelectionInput(layout=layout, ids=ids, pool_version=pool_version, scores={}, score_versions={},
                              score_params={}, unscored=np.zeros(len(ids), bool),
                              groups={"source": pool_groups(layout, ids),
                                      "output_chars": [len(text) for text in kept.column("output").to_pylist()]},
                              policy_reads=method.policy_reads)
    keys = capabilities if scorer.targeted else [ALL]
    if not keys:
        raise MethodInputError(f"{method.name} needs at least one capability with a target set")
    scores, versions, params, ids, unscored, groups = {}, {}, {}, None, None, {}
    for capability in keys:
        path = layout.scores(scorer.name, capability)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: materialize {scorer.name}_scores"
                                    + (f"[{capability}]" if scorer.targeted else "") + " first")
        table = read_table(path, columns=["example_id", "score", *scorer.group_columns])
        meta = read_metadata(path)
        if meta["pool_version"] != pool_version:
            raise MethodInputError(f"{scorer.name}_scores[{capability}] was computed on pool version "
                                   f"{meta['pool_version']}, the pool is now {pool_version}: re-materialize it")
        these = table.column("example_id").to_pylist()
        if ids is None:
            ids = these
            unscored = table.column("score").is_null().to_numpy(zero_copy_only=False)
        elif these != ids:
            raise MethodInputError(f"{scorer.name}_scores[{capability}] covers other rows than "
                                   f"{scorer.name}_scores[{keys[0]}]: re-materialize it")
        scores[capability] = table.column("score").fill_null(0.0).to_numpy()
        groups.update({name: table.column(name).to_pylist() for name in scorer.group_columns})
        versions[capability] = meta["score_version"]
        params[capability] = meta["params"]
    return SelectionInput(layout=layout, ids=ids, pool_version=pool_version, scores=scores, score_versions=versions,
                          score_params=params, unscored=unscored,
                          groups={"source": pool_groups(layout, ids), **groups},
                          matrix_loader=_load_matrix(layout, scorer, versions), policy_reads=method.policy_reads)


def _contamination(layout: LakeLayout, pool_version: str, required: bool) -> tuple[set[str] | None, str | None]:
    """The contaminated ids and the check's version; (None, None) where the pool was not checked and
    nothing requires it."""
    if not required and not layout.pool_contamination.exists():
        return None, None
    try:
        return read_contaminated(layout, pool_version)
    except ValueError as exc:
        raise MethodInputError(str(exc)) from None


def _near_duplicate_groups(layout: LakeLayout, pool_version: str, required: bool) -> tuple[dict | None, str | None]:
    """example id -> near-duplicate group and the clustering's version; (None, None) where the pool was not
    clustered (or was clustered on another version) and nothing requires it: the diagnostics then say "not
    checked" rather than count against stale groups."""
    try:
        found = nd.read_groups(layout, pool_version)
    except ValueError as exc:
        if not required:
            return None, None
        raise MethodInputError(str(exc)) from None
    if found is None:
        if required:
            raise FileNotFoundError(f"{layout.pool_near_duplicates} is missing: materialize {nd.ASSET} first (or "
                                    "select with max_per_cluster=0)")
        return None, None
    return found


def run_selection(layout: LakeLayout, method: Method, params, capabilities: list[str], model: ModelInfo,
                  options: SelectionOptions = SelectionOptions()) -> list[dict]:
    """Select with ``method`` and write each subset with its lineage, then the method's current-subset
    table. Returns one record per subset written (version, capability, slot, size, ids).

    By default the candidates leave out contaminated rows: every policy sees the same input without them
    (scores, groups, matrices, and the stores it reads, through ``SelectionInput.restricted``). Where that
    left something out, the selection is also run without it, to report what it would have taken. With
    ``max_per_cluster``, only the first rows (by id) of each near-duplicate group stay candidates."""
    full = selection_input(layout, method, capabilities)
    contaminated, contamination_version = _contamination(layout, full.pool_version, options.exclude_contaminated)
    left_out = sorted(set(full.ids) & contaminated) if contaminated is not None and options.exclude_contaminated else []
    groups, groups_version = _near_duplicate_groups(layout, full.pool_version, options.max_per_cluster > 0)
    beyond_cap = nd.capped([i for i in full.ids if i not in set(left_out)], groups, options.max_per_cluster) \
        if options.max_per_cluster else set()
    inp = full.restricted(set(left_out) | beyond_cap)
    would_take: dict[tuple[str, str], int] = {}
    if left_out:
        for chosen in method.select(full, params):
            would_take[(chosen.capability, chosen.slot)] = sum(full.ids[i] in contaminated for i in chosen.indices)
    pool = PoolView.open(layout)
    hashes = pool.content_hashes
    lengths = np.array([len(text) for text in pool.aligned(inp.ids, "output")], np.float64)
    sources = inp.groups["source"]  # aligned with inp.ids by selection_input
    written = []
    for chosen in method.select(inp, params):
        selected_unscored = [inp.ids[i] for i in chosen.indices if inp.unscored[i]]
        if selected_unscored:
            raise MethodInputError(f"{method.name} selected rows without a score: {selected_unscored[:5]}")
        # Lineage records the check only where it changed the candidates, so a clean pool's subsets keep
        # the versions they had before pools were checked.
        lineage = {**chosen.params, **({"contaminated_left_out": len(left_out),
                                        "contamination_version": contamination_version} if left_out else {}),
                   **({"max_per_cluster": options.max_per_cluster, "near_duplicates_left_out": len(beyond_cap),
                       "near_duplicates_version": groups_version} if beyond_cap else {})}
        record = write_subset(layout, method=method.name, capability=chosen.capability, ids=inp.ids,
                              scores=chosen.scores, chosen=chosen.indices, budget_ratio=chosen.budget_ratio,
                              params=lineage, pool_version=inp.pool_version, model=model,
                              content_hashes=hashes)
        found = diagnose(inp.ids, lengths, sources, chosen.indices, chosen.scores,
                         None if chosen.scores is None else ~inp.unscored)
        taken = None if contaminated is None else sum(inp.ids[i] in contaminated for i in chosen.indices)
        if contaminated is None:
            counts = dict.fromkeys(("contaminated_selected", "contaminated_excluded", "contaminated_would_take"))
        elif options.exclude_contaminated:
            counts = {"contaminated_selected": taken, "contaminated_excluded": len(left_out),
                      "contaminated_would_take": would_take.get((chosen.capability, chosen.slot), 0)}
        else:
            counts = {"contaminated_selected": taken, "contaminated_excluded": 0, "contaminated_would_take": taken}
        share = None if groups is None else nd.duplicate_share((inp.ids[i] for i in chosen.indices), groups)
        write_parquet(pa.Table.from_pylist([{"subset_version": record["subset_version"], "method": method.name,
                                             "capability": chosen.capability, **found.as_row(), **counts,
                                             "duplicate_share": share}],
                                           schema=SUBSET_DIAGNOSTICS_SCHEMA), layout.subset_diagnostics(record["subset_version"]))
        if chosen.chosen_by is not None:
            write_parquet(pa.Table.from_pylist([
                {"subset_version": record["subset_version"], "example_id": inp.ids[i], "rank": rank, "chosen_by": by}
                for rank, (i, by) in enumerate(zip(chosen.indices, chosen.chosen_by), start=1)],
                schema=SUBSET_EXPLANATIONS_SCHEMA), layout.subset_explanation(record["subset_version"]))
        written.append({**record, "slot": chosen.slot, "budget_ratio": chosen.budget_ratio, "diagnostics": found,
                        "contamination": counts, "duplicate_share": share,
                        "expected_size": chosen.expected_size, "shortfall": chosen.shortfall})
    now = datetime.now(timezone.utc)
    before = {}
    if layout.current_subsets(method.name).exists():
        before = {(r["capability"], r["slot"]): r for r in read_table(layout.current_subsets(method.name)).to_pylist()}

    def previous(w: dict) -> str | None:
        old = before.get((w["capability"], w["slot"]))
        if old is None:
            return None
        # Re-selecting the same version keeps the version it replaced, so the last change stays visible.
        return old.get("previous_version") if old["subset_version"] == w["subset_version"] else old["subset_version"]

    write_parquet(pa.Table.from_pylist([
        dict(method=method.name, capability=w["capability"], slot=w["slot"], budget_ratio=w["budget_ratio"],
             subset_version=w["subset_version"], pool_version=inp.pool_version, selected_at=now,
             previous_version=previous(w)) for w in written],
        schema=CURRENT_SUBSETS_SCHEMA), layout.current_subsets(method.name))
    return written


def _slot_label(w: dict) -> str:
    return f"{w['capability']}{'/' + w['slot'] if w['slot'] else ''}"


def budget_of(written: list[dict]) -> dict[str, int]:
    """Rows each written subset holds, by slot label (``capability`` or ``capability/slot``)."""
    return {_slot_label(w): w["n_selected"] for w in written}


def expected_sizes(written: list[dict]) -> dict[str, int]:
    """The size each written subset must hold: the method's own rounding rule where it has one (LP's
    per-cluster chunks), else ceil(r * N), less what a policy reported it could not fill (G2IS's walk)."""
    return {_slot_label(w): (w["expected_size"] if w["expected_size"] is not None
                             else budget(w["n_pool"], w["budget_ratio"])) - w["shortfall"] for w in written}

