"""LESS (Xia et al. 2024; methods.md sections 2 and 11) on the registry: the top floor(r * N) rows by
LESS's capability score (mean influence per subtask, max over subtasks). For every capability at once,
the max over the capabilities' scores: the official aggregation with every capability's subtasks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.methods.base import ALL, Chosen, Method, MethodInputError, SelectionInput
from nait_pipeline.lib.methods.gradients.gradient_pool import SCORER
from nait_pipeline.lib.selection import policies as selection


@dataclass(frozen=True)
class LessParams:
    budget_ratio: float = 0.05
    """Share of the pool to keep: floor(r * N), as the official write-out (official default 5 %)."""


def floor_budget(n: int, ratio: float, selectable: int, method: str) -> int:
    if not 0 < ratio <= 1:
        raise MethodInputError(f"budget_ratio must be in (0, 1], got {ratio}")
    k = math.floor(ratio * n + 1e-9)
    if k < 1:
        raise MethodInputError(f"{method}: budget_ratio={ratio} of {n} rows keeps no row")
    if k > selectable:
        raise MethodInputError(f"{method}: budget {k} exceeds the {selectable} rows with a gradient")
    return k


def _select(inp: SelectionInput, params: LessParams) -> list[Chosen]:
    r = params.budget_ratio
    k = floor_budget(len(inp.ids), r, int((~inp.unscored).sum()), "less")
    # Rows without a gradient rank last and are never within the budget (checked above).
    ranked = {c: np.where(inp.unscored, np.finfo(np.float64).min, s) for c, s in inp.scores.items()}

    def top(scores: np.ndarray) -> list[int]:
        return selection.top_k(inp.ids, scores, k)

    out = [Chosen(c, top(s), inp.scores[c], {"budget_ratio": r, "budget_rule": "floor",
                                             "score_versions": {c: inp.score_versions[c]}}, r, expected_size=k)
           for c, s in ranked.items()]
    merged = np.max(list(ranked.values()), axis=0)
    return out + [Chosen(ALL, top(merged), np.where(inp.unscored, 0.0, merged),
                         {"budget_ratio": r, "budget_rule": "floor", "merge": "max over capabilities",
                          "score_versions": inp.score_versions}, r, expected_size=k)]


METHOD = Method(
    name="less", description="LESS: the rows whose (Adam-preconditioned, projected) LoRA gradients align best "
                             "with the capability's target gradients over the warmup checkpoints.",
    scorer=SCORER, params=LessParams, select=_select,
    policy="top floor(r·N) by max over subtasks of mean influence (max over capabilities for all)",
    source="LESS (methods.md §2, §11; princeton-nlp/LESS)",
    cost="LoRA warmup on 5 % of the pool + per-example gradients of every pool row at every checkpoint",
    recipe=("A = sum_c w_c * pool_c @ target_c.T (rows unit-norm; w_c = mean lr of epoch c, summing to 1); "
            "score = max over subtasks of the mean of A over the subtask's columns; rank by descending score, "
            "ties by ascending id; keep floor(budget_ratio * N). The dump's less/ folder feeds the official "
            "matching.py (see docs in the dump manifest)."),
)
