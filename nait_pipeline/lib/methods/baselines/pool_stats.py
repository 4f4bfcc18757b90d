"""Baselines from per-example statistics of the forward store: response perplexity bands and
longest-k by response tokens. Neither needs an in-domain set: one score serves every capability."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.features.forward import FORWARD
from nait_pipeline.lib.methods.base import ALL, Chosen, Method, Scored, Scorer, SelectionInput
from nait_pipeline.lib.selection import policies as selection


@dataclass(frozen=True)
class NoScoreParams:
    """No scoring parameters: the statistic is read from the store as it is."""


@dataclass(frozen=True)
class BudgetParams:
    budget_ratio: float = 0.1
    """Share of the pool to keep (ceil(r * N))."""


def _perplexity(pool, target, params) -> Scored:
    loss = pool.scalars["response_loss"].astype(np.float64)
    unscored = np.isnan(loss)  # truncation left no response token: no perplexity is defined
    if np.isinf(loss).any():
        bad = [pool.ids[i] for i in np.flatnonzero(np.isinf(loss))[:5]]
        raise ValueError(f"infinite response loss for {bad}: the store is corrupt, re-materialize their shards")
    scores = np.where(unscored, 0.0, np.exp(np.where(unscored, 0.0, loss)))
    return Scored(scores=scores, unscored=unscored, notes={"no_response_tokens": int(unscored.sum())})


def _length(pool, target, params) -> Scored:
    return Scored(scores=pool.scalars["n_response_tokens"].astype(np.float64))


def _banded(which: str):
    def select(inp: SelectionInput, params: BudgetParams) -> list[Chosen]:
        scored = np.flatnonzero(~inp.unscored)
        k = selection.budget(len(inp.ids), params.budget_ratio)
        if k > len(scored):
            raise ValueError(f"budget {k} exceeds the {len(scored)} rows with a perplexity")
        sub_ids = [inp.ids[i] for i in scored]
        picked = selection.band(sub_ids, inp.scores[ALL][scored], k, which)
        return [Chosen(ALL, [int(scored[i]) for i in picked], inp.scores[ALL],
                       {"budget_ratio": params.budget_ratio, "band": which,
                        "score_versions": {ALL: inp.score_versions[ALL]}}, params.budget_ratio)]
    return select


def _longest(inp: SelectionInput, params: BudgetParams) -> list[Chosen]:
    k = selection.budget(len(inp.ids), params.budget_ratio)
    return [Chosen(ALL, selection.top_k(inp.ids, inp.scores[ALL], k), inp.scores[ALL],
                   {"budget_ratio": params.budget_ratio, "score_versions": {ALL: inp.score_versions[ALL]}},
                   params.budget_ratio)]


PERPLEXITY = Scorer(
    name="perplexity",
    description="Response perplexity exp(mean response-token NLL) under the base model, from the store.",
    params=NoScoreParams, kind=FORWARD, pool_scalars=("response_loss",), score=_perplexity, targeted=False)
LENGTH = Scorer(
    name="length",
    description="Response tokens (after truncation) of each pool example, from the store.",
    params=NoScoreParams, kind=FORWARD, pool_scalars=("n_response_tokens",), score=_length, targeted=False)

PERPLEXITY_METHODS = [
    Method(
        name=f"perplexity_{which}",
        description=f"The {which} band of response perplexity (rows without a response token are never chosen).",
        scorer=PERPLEXITY, params=BudgetParams, select=_banded(which),
        policy=f"{which} ceil(r·N) by perplexity" + (" (centred on the median)" if which == "middle" else ""),
        source="perplexity baseline (methods.md §8-9)",
        cost="the shared forward store (response loss); one sort",
        recipe=(f"perplexity = exp(response_loss) over rows with a response token; descending order, ties by "
                f"ascending id; {which}: " + {"top": "the first k", "bottom": "the last k (reversed)",
                                             "middle": "positions floor((N-k)/2) .. +k of the N rows with a "
                                                       "response token"}[which] + "."),
    )
    for which in selection.PERPLEXITY_BANDS
]

LONGEST = Method(
    name="length",
    description="Longest-k by response tokens: the control any representation-based method must beat.",
    scorer=LENGTH, params=BudgetParams, select=_longest,
    policy="top ceil(r·N) by response tokens",
    source="length control (selection-quality.md §1-2)",
    cost="the shared forward store (token counts; a tokenizer alone would do)",
    recipe="rank by descending n_response_tokens, ties by ascending id; keep ceil(budget_ratio * N).",
)
