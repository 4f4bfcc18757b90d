"""References that need no features: seeded uniform random, random balanced per pool source, and the
full pool. Their ids come from the pool table, so they cost nothing to select."""

from __future__ import annotations

from dataclasses import dataclass, field

from nait_pipeline.lib.methods.base import ALL, Chosen, Method, SelectionInput
from nait_pipeline.lib.selection import policies as selection


@dataclass(frozen=True)
class RandomParams:
    budget_ratio: float = 0.1
    """Share of the pool each random subset keeps (ceil(r * N))."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One subset per seed."""


@dataclass(frozen=True)
class FullParams:
    """The full pool has no parameters."""


def _uniform(inp: SelectionInput, params: RandomParams) -> list[Chosen]:
    k = selection.budget(len(inp.ids), params.budget_ratio)
    return [Chosen(ALL, selection.seeded_random(inp.ids, k, seed), None,
                   {"budget_ratio": params.budget_ratio, "seed": seed}, params.budget_ratio, slot=f"seed={seed}")
            for seed in params.seeds]


def _balanced(inp: SelectionInput, params: RandomParams) -> list[Chosen]:
    k = selection.budget(len(inp.ids), params.budget_ratio)
    sources = inp.groups["source"]
    return [Chosen(ALL, selection.balanced_random(inp.ids, sources, k, seed), None,
                   {"budget_ratio": params.budget_ratio, "seed": seed, "balanced_by": "source"},
                   params.budget_ratio, slot=f"seed={seed}")
            for seed in params.seeds]


def _full(inp: SelectionInput, params: FullParams) -> list[Chosen]:
    return [Chosen(ALL, list(range(len(inp.ids))), None, {"budget_ratio": 1.0}, 1.0)]


UNIFORM = Method(
    name="random", description="Seeded uniform random subsets, one per seed.", scorer=None, params=RandomParams,
    select=_uniform, policy="k rows with the smallest sha256(seed:id)", source="baseline",
    cost="none", recipe="rank pool ids by sha256(f'{seed}:{id}') then id; keep ceil(budget_ratio * N).")
BALANCED = Method(
    name="random_balanced", description="Seeded random subsets with an equal share per pool source.",
    scorer=None, params=RandomParams, select=_balanced,
    policy="equal share per source (leftovers shared), sha256(seed:id) order inside each",
    source="baseline (methods.md §9: balanced random)", cost="none",
    recipe="per source, ids by sha256(f'{seed}:{id}'); quotas floor(k/G) (+1 for the first groups in "
           "sha256(f'{seed}:group:{g}') order), capped by the source size, the rest shared again.")
FULL = Method(
    name="full", description="The whole kept pool: the reference every subset is compared with.", scorer=None,
    params=FullParams, select=_full, policy="every row", source="reference", cost="none",
    recipe="every kept pool id.")
