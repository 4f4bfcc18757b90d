"""NAIT as a registered method (methods.md sections 4 and 11): per-layer capability directions
(the `capability_directions` asset), pool scores by projection, top-r subsets and the
all-capability merges. The math lives in :mod:`nait_pipeline.lib.methods.nait.nait_math`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from nait_pipeline.lib.features.feature_store import read_features
from nait_pipeline.lib.features.forward import FORWARD, read_pool_store
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import read_metadata, read_table, write_json, write_parquet
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.pool_view import PoolView
from nait_pipeline.lib.methods.nait import nait_math as nait
from nait_pipeline.lib.methods.base import ALL, Chosen, Method, Scored, Scorer, SelectionInput
from nait_pipeline.lib.methods.dump import Dump
from nait_pipeline.lib.selection import policies as selection

CODE_VERSION = "1"


@dataclass(frozen=True)
class NaitScoreParams:
    aggregation: str = "sum"
    """sum (published: sum over layers of a_l . v_l) | zscore (per-layer z-score first) | cosine."""
    layers: list[int] | None = None
    """1-based layers to sum over; None means every layer."""


@dataclass(frozen=True)
class NaitSubsetParams:
    budget_ratio: float = 0.1
    """Share of the pool to keep (top ceil(r * N))."""
    merge: str = "zsum"
    """All-capability subset: zsum (z-normalized sum) | quota (capabilities take turns) | pooled (one
    direction per layer fitted on the pooled in-domain sets)."""
    drift: str = "R2"
    """Drift used by the pooled merge."""


def load_directions(layout: LakeLayout, capability: str) -> tuple[np.ndarray, dict]:
    path = layout.directions(capability)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialize capability_directions[{capability}] first")
    table = read_table(path)
    meta = read_metadata(path)
    vectors = np.stack(table.column("direction").to_numpy(zero_copy_only=False)).astype(np.float32)
    return vectors, {**meta, "version": meta["directions_version"]}


def target_drifts(layout: LakeLayout, capability: str, drift: str) -> tuple[np.ndarray, dict]:
    """The in-domain activation drifts of one capability, and its store's metadata."""
    source = layout.target_activations(capability)
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing: materialize target_activations[{capability}] first")
    vectors = ("layer_mean", "first_token") + (("last_token",) if drift == "R1" else ())
    stored = read_features([source], vectors=vectors)
    for name in vectors:
        nait.require_finite_layers(stored.vectors[name], stored.ids, f"{name} in the {capability} in-domain set")
    drifts = nait.drift(stored.vectors["layer_mean"], stored.vectors["first_token"],
                        stored.vectors.get("last_token"), drift)
    return drifts, stored.metadata


def write_directions(layout: LakeLayout, capability: str, drift: str = "R2", min_rows: int = 2):
    """Fit and write one capability's directions (``capability_directions``): per stored layer the PC1 of the
    in-domain drift, sign-fixed, with its alignment to the first-token state. Returns (path, fitted,
    alignment, version)."""
    drifts, store_meta = target_drifts(layout, capability, drift)
    fitted = nait.fit_directions(drifts, min_rows, capability)
    n_layers = fitted.vectors.shape[0]
    layers = store_meta.get("layers") or list(range(1, n_layers + 1))  # a compact store keeps some layers
    first_token = read_features([layout.target_activations(capability)], vectors=("first_token",))
    alignment = nait.sink_alignment(fitted.vectors, first_token.vectors["first_token"])
    table = pa.table({
        "capability": [capability] * n_layers,
        "layer": layers,
        "direction": [row.astype(np.float32) for row in fitted.vectors],
        "explained_variance_ratio": fitted.explained_variance_ratio,
        "sign_flipped": fitted.sign_flipped,
        "sink_alignment": alignment,
    })
    version = sha256_json({"store": store_meta["store_version"], "drift": drift, "code": CODE_VERSION})[:16]
    path = write_parquet(table, layout.directions(capability), {
        "directions_version": version, "drift": drift, "n_rows": fitted.n_rows,
        "model_id": store_meta["model_id"], "template_hash": store_meta["template_hash"],
        "target_store_version": store_meta["store_version"],
        **({"reduction": store_meta["reduction"]} if store_meta.get("reduction") else {})})
    return path, fitted, alignment, version


def _load_target(layout: LakeLayout, capability: str, params: NaitScoreParams):
    return load_directions(layout, capability)


def _score(pool, directions: np.ndarray, params: NaitScoreParams) -> Scored:
    # Shard by shard in the stored dtype: only [N, L] projections are kept for the whole pool.
    projections, norms = [], []
    for block in pool.blocks("layer_mean", coded=True):
        projections.append(nait.layer_projections(block, directions))
        if params.aggregation == "cosine":
            norms.append(nait.layer_norms(block if isinstance(block, np.ndarray) else block.decode()))
    projections = np.concatenate(projections)
    nait.require_finite_layers(projections, pool.ids, "pool activations (projection on the direction)")
    scores = nait.aggregate(projections, params.aggregation, params.layers,
                            np.concatenate(norms) if norms else None)
    return Scored(scores=scores, columns={"layer_projections": projections.astype(np.float32)})


def _pooled_scores(layout: LakeLayout, capabilities: list[str], drift: str) -> tuple[np.ndarray, list[str]]:
    """Merge (b): one direction per layer fitted on all capabilities' in-domain sets together."""
    drifts = [target_drifts(layout, capability, drift)[0] for capability in capabilities]
    fitted = nait.fit_directions(np.concatenate(drifts), capability="all (pooled)")
    pool, _ = read_pool_store(layout, ("layer_mean",))
    projections = np.concatenate([nait.layer_projections(b, fitted.vectors)
                                  for b in pool.blocks("layer_mean", coded=True)])
    return nait.aggregate(projections), pool.ids


def _select(inp: SelectionInput, params: NaitSubsetParams) -> list[Chosen]:
    ids, r = inp.ids, params.budget_ratio
    k = selection.budget(len(ids), r)
    capabilities = list(inp.scores)
    chosen = [Chosen(capability=c, indices=selection.top_k(ids, inp.scores[c], k), scores=inp.scores[c],
                     params={"budget_ratio": r, **inp.score_params[c], "score_versions": {c: inp.score_versions[c]}},
                     budget_ratio=r)
              for c in capabilities]
    # Scoring parameters shared by every capability are recorded flat, differing ones per capability.
    first = inp.score_params[capabilities[0]]
    shared = first if all(p == first for p in inp.score_params.values()) else {"score_params": inp.score_params}
    merge_params = {"budget_ratio": r, "merge": params.merge, **shared, "score_versions": inp.score_versions}
    if params.merge == "zsum":
        merged = selection.zsum_scores(inp.scores)
        indices = selection.top_k(ids, merged, k)
    elif params.merge == "quota":
        merged = selection.zsum_scores(inp.scores)
        indices = selection.equal_quota(ids, inp.scores, k)
    elif params.merge == "pooled":
        merged, pooled_ids = _pooled_scores(inp.layout, capabilities, params.drift)
        index, _ = inp.positions(pooled_ids, "pool_activations (against nait_scores)")
        merged = merged[index]
        merge_params["drift"] = params.drift
        indices = selection.top_k(ids, merged, k)
    else:
        raise ValueError(f"merge must be one of {selection.MERGES}, got {params.merge!r}")
    return chosen + [Chosen(capability=ALL, indices=indices, scores=merged, params=merge_params, budget_ratio=r)]


SCORER = Scorer(
    name="nait",
    description="NAIT score: sum over layers of the projection of the pool example's token-mean activation "
                "on the capability's direction (PC1 of the in-domain activation drift).",
    params=NaitScoreParams,
    kind=FORWARD,
    pool_vectors=("layer_mean",),
    score=_score,
    load_target=_load_target,
    target_assets=("capability_directions",),
    version_key="directions",
    code_version=CODE_VERSION,
)

def dump_nait_selection(layout: LakeLayout, subset_version: str, out_dir: Path, template) -> Path:
    """Dump the arrays behind a NAIT subset: features, directions, scores, ids and rendered texts."""
    lineage = read_table(layout.lineage(subset_version)).to_pylist()[0]
    if lineage["method"] != "nait":
        raise ValueError(f"{subset_version} was made by {lineage['method']!r}; dump supports NAIT subsets")
    params = json.loads(lineage["params_json"])
    capabilities = list(params["score_versions"])
    dump = Dump(out_dir)

    for capability in capabilities:
        current = read_metadata(layout.scores("nait", capability))["score_version"]
        if params["score_versions"][capability] != current:
            raise ValueError(f"{subset_version} was selected from {capability} score version "
                             f"{params['score_versions'][capability]}, but the lake now holds {current}: "
                             "dump a subset made from the current scores (re-materialize nait_subsets)")
    score_tables = {c: read_table(layout.scores("nait", c)) for c in capabilities}
    pool_ids = score_tables[capabilities[0]].column("example_id").to_pylist()
    pool = PoolView.open(layout)
    store = read_features([layout.pool_activations(s) for s in pool.shards], scalars=("n_tokens", "truncated"))
    if store.ids != pool_ids:
        raise ValueError("pool activations no longer match the stored scores: re-materialize nait_scores")
    dump.json("pool_ids.json", pool_ids, "pool example ids; row i of every pool array is this id")
    dump.array("pool_layer_mean.npy", store.vectors["layer_mean"],
               "[N, L, d] token-mean residual stream per decoder layer (as read from the store, float32)")
    for capability in capabilities:
        table = score_tables[capability]
        dump.array(f"scores_{capability}.npy", table.column("score").to_numpy(),
                   f"[N] NAIT score per pool example for {capability}")
        dump.array(f"layer_projections_{capability}.npy",
                   np.stack(table.column("layer_projections").to_numpy(zero_copy_only=False)),
                   f"[N, L] a_l . v_l per layer for {capability}; scores = sum over the layers in params")
        directions = read_table(layout.directions(capability))
        dump.array(f"directions_{capability}.npy",
                   np.stack(directions.column("direction").to_numpy(zero_copy_only=False)).astype(np.float32),
                   f"[L, d] unit direction per layer for {capability} (PC1 of the drift, sign fixed by its mean)")
        dump.array(f"explained_variance_{capability}.npy",
                   directions.column("explained_variance_ratio").to_numpy(), f"[L] PC1 variance share ({capability})")
        target = read_features([layout.target_activations(capability)], vectors=("layer_mean", "first_token"))
        dump.json(f"target_ids_{capability}.json", target.ids, f"in-domain example ids for {capability}")
        dump.array(f"target_layer_mean_{capability}.npy", target.vectors["layer_mean"],
                   f"[n, L, d] token means of the {capability} in-domain set")
        dump.array(f"target_first_token_{capability}.npy", target.vectors["first_token"],
                   f"[n, L, d] first-token states of the {capability} in-domain set")
        targets = read_table(layout.target_selection(capability)).to_pylist()
        dump.jsonl(f"target_texts_{capability}.jsonl", [
            dict(zip(("prompt_text", "response_text"), template.render(t["prompt"], "", t["answer"])),
                 example_id=t["example_id"]) for t in targets],
            f"the {capability} in-domain examples exactly as rendered for the model")

    subset = read_table(layout.subset(subset_version)).sort_by("rank")
    dump.json("selected_ids.json", subset.column("example_id").to_pylist(), "selected ids, rank 1 first")
    dump.array("selected_scores.npy", subset.column("score").to_numpy(), "the score each selected id was ranked by")
    texts = []
    for row, n_tokens, truncated in zip(pool.rows(pool_ids), store.scalars["n_tokens"], store.scalars["truncated"]):
        example_id = row["example_id"]
        prompt_text, response_text = template.render_row(row)
        texts.append({"example_id": example_id, "prompt_text": prompt_text, "response_text": response_text,
                      "n_tokens": int(n_tokens), "truncated": bool(truncated)})
    dump.jsonl("pool_texts.jsonl", texts, "pool examples as rendered for the model (before truncation to n_tokens)")

    manifest = {
        "subset_version": subset_version,
        "lineage": {k: str(v) for k, v in lineage.items()},
        "params": params,
        "store": {k: read_metadata(layout.pool_activations(pool.shards[0])).get(k)
                  for k in ("model_id", "template_hash", "featurizer", "layers")},
        "recipe": (
            "score_c = sum over layers l of pool_layer_mean[:, l] @ directions_c[l] (aggregation 'sum'); "
            "for capability 'all' with merge 'zsum': sum over capabilities of (score_c - mean) / std; "
            "rank by descending score, ties by ascending id; keep the first ceil(budget_ratio * N)."
        ),
        "files": dump.files,
    }
    return write_json(manifest, out_dir / "manifest.json")


METHOD = Method(
    name="nait",
    description="Top-r pool examples by NAIT score per capability; the all-capability subset merges "
                "capabilities by z-normalized sum (or quota / pooled).",
    scorer=SCORER,
    params=NaitSubsetParams,
    select=_select,
    policy="top ceil(r·N) per capability; all: z-sum (quota, pooled)",
    source="NAIT (methods.md §4, §11)",
    cost="one forward pass over pool and targets (shared store); PCA per layer; N×L×d projection",
    code_version=CODE_VERSION,
    recipe=("score_c = sum over layers l of pool_layer_mean[:, l] @ directions_c[l] (aggregation 'sum'); "
            "for capability 'all' with merge 'zsum': sum over capabilities of (score_c - mean) / std; "
            "rank by descending score, ties by ascending id; keep the first ceil(budget_ratio * N)."),
    dump=dump_nait_selection,
)
