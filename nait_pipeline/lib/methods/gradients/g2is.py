"""G2IS (Zhao et al. 2025; methods.md sections 5 and 11) on the registry: the gradient walk
(:mod:`~nait_pipeline.lib.methods.gradients.g2is_math`) over the pool's combined gradient features and the
``gradient_graph``, guided by the principal components of the capability's target gradients (every
capability's target gradients stacked into one PCA for the all-capability subset).

The walk may stop short of the budget (its no-conflict and consistency constraints are hard): the
subset then holds fewer rows, its lineage records the shortfall per component, and the subsets asset's
``budget_filled`` check warns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.features.gradient_store import GRADIENT_GRAPH, load_target_gradients, read_gradient_pool
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.methods.gradients import g2is_math, less_math
from nait_pipeline.lib.methods.base import ALL, Chosen, Method, MethodInputError, SelectionInput
from nait_pipeline.lib.methods.dump import Dump, torch_file
from nait_pipeline.lib.methods.gradients.gradient_pool import SCORER


@dataclass(frozen=True)
class G2isParams:
    budget_ratio: float = 0.01
    """Share of the pool to walk to: int(N * r) (official default 1 %)."""
    delta: float = 0.8
    """Consistency: a row joins only if |cos(sum + g, k_j)| >= delta * |cos(sum, k_j)| (official --ways)."""
    val_k: float = 0.5
    """Share of the target gradients' variance the kept principal components reach (official variance mode)."""
    sign_fix: bool = False
    """Orient each component towards the mean target gradient (a deviation; the official code keeps
    scikit-learn's signs, which anchors a flipped component on anti-aligned rows)."""


def read_graph(layout: LakeLayout, features_version: str) -> tuple[np.ndarray, dict]:
    path = layout.gradient_graph
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialize {GRADIENT_GRAPH.pool_assets[0].name} first")
    with path.open("rb") as handle, np.load(handle) as stored:
        meta = {"features_version": str(stored["features_version"]), "kind": str(stored["kind"]),
                "k": int(stored["neighbours"].shape[1])}
        if meta["features_version"] != features_version:
            raise MethodInputError("gradient_graph was built from other pool gradients than the store holds now: "
                                   "re-materialize gradient_graph")
        return stored["neighbours"], meta


def _select(inp: SelectionInput, params: G2isParams) -> list[Chosen]:
    pool, _ = read_gradient_pool(inp.layout)
    # The walk runs on the whole graph; rows that are not candidates (left out by the runner) are never taken.
    index, not_candidate = inp.positions(pool.ids, "pool_gradients (against less_scores)")
    to_input = {int(row): position for position, row in enumerate(index)}
    features = pool.combined()
    graph, graph_meta = read_graph(inp.layout, pool.metadata["features_version"])
    targets = {c: less_math.combined_features(load_target_gradients(inp.layout, c)[0].checkpoints, pool.weights)
               for c in inp.scores}

    def walk(capability: str, target: np.ndarray, versions: dict) -> Chosen:
        core = g2is_math.core_knowledge(target, params.val_k, params.sign_fix)
        result = g2is_math.gradient_walk(features, core, graph, params.budget_ratio, params.delta,
                                         excluded=pool.zero_gradient | not_candidate)
        if not result.selected:
            raise MethodInputError(f"g2is selected nothing for {capability}: budget_ratio={params.budget_ratio} of "
                                   f"{len(inp.ids)} rows is {result.target}")
        anchor_score = (features @ core.components.T).max(axis=1).astype(np.float64)[index]
        return Chosen(capability, [to_input[row] for row in result.selected], anchor_score,
                      {"budget_ratio": params.budget_ratio, "delta": params.delta, "val_k": params.val_k,
                       "sign_fix": params.sign_fix, "components": len(core.weights),
                       "component_weights": [round(float(w), 6) for w in core.weights],
                       "component_budgets": result.budgets, "component_filled": result.filled,
                       "via_fallback": result.via_fallback, "shortfall": result.shortfall,
                       "sklearn_version": core.sklearn_version, "graph": graph_meta,
                       "score_versions": versions},
                      params.budget_ratio, expected_size=result.target, shortfall=result.shortfall)

    out = [walk(c, t, {c: inp.score_versions[c]}) for c, t in targets.items()]
    return out + [walk(ALL, np.concatenate([targets[c] for c in sorted(targets)]), inp.score_versions)]


def dump_walk_inputs(dump: Dump, layout: LakeLayout, params: dict, capabilities: list[str]) -> dict:
    """G2IS's inputs for the official ``gradient_walk.py``, beside the gradient store's own dump:
    ``g2is/train_gradients.pt`` [N, C*dim] (``concat_c sqrt(w_c) * f_c``), ``g2is/validation_gradients.pt``
    (the capability's target rows, or every capability's stacked in name order for ``all``) and
    ``g2is/graph.npy`` [N, k]."""
    pool, _ = read_gradient_pool(layout)
    features = pool.combined()
    stacked = np.concatenate([less_math.combined_features(load_target_gradients(layout, c)[0].checkpoints, pool.weights)
                              for c in capabilities])
    graph, graph_meta = read_graph(layout, pool.metadata["features_version"])
    torch_file(dump, "g2is/train_gradients.pt", features, "[N, C*dim] combined pool gradient features")
    torch_file(dump, "g2is/validation_gradients.pt", stacked,
               f"combined target gradient features of {capabilities} (stacked in this order)")
    dump.array("g2is/graph.npy", graph, f"[N, k] neighbours, most similar first ({graph_meta['kind']})")
    return {
        "g2is_walk": (f"python gradient_walk.py --train_gradients_file g2is/train_gradients.pt "
                      f"--validation_gradients_file g2is/validation_gradients.pt --graph g2is/graph.npy "
                      f"--val_k {params.get('val_k')} --train_k {params.get('budget_ratio')} --ways "
                      f"{params.get('delta')} --train_data_dir train.jsonl --save g2is_out; "
                      "target_sample.kpl then lists selected_ids.json's rows of pool_ids.json, in order"),
        "g2is_conditions": ("the same scikit-learn version as params.sklearn_version (PCA signs), "
                            "sign_fix false, an exact graph (a faiss graph may pad with -1), no zero-gradient "
                            "rows (the official walk cannot exclude them)"),
    }


METHOD = Method(
    name="g2is", description="G2IS: a walk on the pool's gradient kNN graph that follows the principal components "
                             "of the target gradients, with no conflicting gradients inside a component's set.",
    scorer=SCORER, params=G2isParams, select=_select,
    policy="per PCA component (budget by explained variance): anchor, then graph walk with no-conflict and "
           "consistency constraints, global fallback; may stop short (reported)",
    source="G2IS (methods.md §5, §11; zy125413/G2IS gradient_walk.py)",
    cost="LESS's gradient store + kNN graph O(N²·D) exact (or FAISS IVF) + the walk",
    recipe=("features = concat_c sqrt(w_c) * pool_c (unit rows); the dump's g2is/ folder holds train and "
            "validation gradient files and graph.npy for the official gradient_walk.py with --train_k r "
            "--ways delta --val_k val_k; it returns row indices of the dump's row order."),
    policy_reads=(GRADIENT_GRAPH,),
    dump_extra=dump_walk_inputs,
)
