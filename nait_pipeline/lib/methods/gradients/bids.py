"""BIDS (Dai et al. 2025; methods.md section 7) on the registry: LESS's instance matrix, column
z-scored over the pool, then the balanced greedy (:mod:`~nait_pipeline.lib.methods.gradients.bids_math`).
Per capability over its target instances; for every capability at once over all of them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.methods.gradients import bids_math
from nait_pipeline.lib.methods.base import ALL, Chosen, Method, MethodInputError, SelectionInput
from nait_pipeline.lib.methods.gradients.gradient_pool import SCORER
from nait_pipeline.lib.methods.gradients.less import floor_budget
from nait_pipeline.lib.io.lake import read_table


@dataclass(frozen=True)
class BidsParams:
    budget_ratio: float = 0.05
    """Share of the pool to keep: floor(r * N)."""
    columns: str = "instance"
    """instance: one column per target row (the default reading of the paper) | task: the mean of each
    subtask's z-scored columns."""


def _tasks(inp: SelectionInput, capability: str, target_ids: list[str]) -> list[str]:
    table = read_table(inp.layout.target_selection(capability), columns=["example_id", "task"])
    task_of = dict(zip(table.column("example_id").to_pylist(), table.column("task").to_pylist()))
    return [f"{capability}/{task_of.get(t, capability)}" for t in target_ids]


def _select(inp: SelectionInput, params: BidsParams) -> list[Chosen]:
    if params.columns not in ("instance", "task"):
        raise MethodInputError(f"columns must be 'instance' or 'task', got {params.columns!r}")
    r = params.budget_ratio
    k = floor_budget(len(inp.ids), r, int((~inp.unscored).sum()), "bids")
    scored = ~inp.unscored
    normalised = {}
    for capability in inp.scores:
        matrix, target_ids = inp.matrix(capability)
        # z-scores over the rows that have a gradient; rows without one are never picked.
        if scored.all():
            z = bids_math.column_zscore(matrix, target_ids)
        else:
            z = np.zeros(matrix.shape, np.float32)
            z[scored] = bids_math.column_zscore(matrix[scored], target_ids)
        del matrix
        if params.columns == "task":
            z, _ = bids_math.task_columns(z, _tasks(inp, capability, target_ids))
        normalised[capability] = z

    def chosen(capability: str, z: np.ndarray, versions: dict) -> Chosen:
        picked = bids_math.balanced_greedy(z, k, excluded=inp.unscored)
        # The recorded score: each row's best normalised influence (its utility before any pick); the
        # subset's order is the greedy's.
        return Chosen(capability, picked, z.max(axis=1).astype(np.float64),
                      {"budget_ratio": r, "budget_rule": "floor", "columns": params.columns,
                       "target_columns": int(z.shape[1]), "score_versions": versions}, r, expected_size=k)

    out = [chosen(c, z, {c: inp.score_versions[c]}) for c, z in normalised.items()]
    if len(normalised) == 1:
        return out + [chosen(ALL, next(iter(normalised.values())), inp.score_versions)]
    # All capabilities' columns side by side; each capability's array is freed once copied, so this holds
    # one copy of the z-scores, not two.
    widths = {c: z.shape[1] for c, z in normalised.items()}
    combined = np.empty((len(inp.ids), sum(widths.values())), np.float32)
    start = 0
    for capability in sorted(widths):
        combined[:, start:start + widths[capability]] = normalised.pop(capability)
        start += widths[capability]
    return out + [chosen(ALL, combined, inp.score_versions)]


METHOD = Method(
    name="bids", description="BIDS: LESS influence z-scored per target instance; each pick is the row most "
                             "influential on the target instance the subset serves worst so far.",
    scorer=SCORER, params=BidsParams, select=_select,
    policy="balanced greedy over z-scored target columns (all capabilities' columns for all)",
    source="BIDS (methods.md §7)", cost="LESS's gradient store + column sorts O(N·m·log N) + O(B·m)",
    recipe=("An = column z-score of A over the rows with a gradient (population std); repeat floor(r·N) "
            "times: gap_j = max over untaken rows of An[:, j] minus the mean of An[T, j] over the taken rows "
            "(0 at first); take the best untaken row of the column with the largest gap, ties by lowest row "
            "index (rows in id order)."),
)
