"""References that need no features: seeded uniform random, random balanced per pool source, and the
full pool. Their ids come from the pool table, so they cost nothing to select."""

from __future__ import annotations

from dataclasses import dataclass, field

from nait_pipeline.lib.data.mixed_pool import CPU_MIX_2K
from nait_pipeline.lib.methods.base import ALL, Chosen, Method, MethodInputError, SelectionInput
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


def _stratified(inp: SelectionInput, params: RandomParams) -> list[Chosen]:
    k = selection.budget(len(inp.ids), params.budget_ratio)
    quintiles = selection.length_quintiles(inp.groups["output_chars"])
    strata = [f"{source}|q{quintile}" for source, quintile in zip(inp.groups["source"], quintiles)]
    return [Chosen(ALL, selection.proportional_random(inp.ids, strata, k, seed), None,
                   {"budget_ratio": params.budget_ratio, "seed": seed, "stratified_by": "source x length quintile"},
                   params.budget_ratio, slot=f"seed={seed}")
            for seed in params.seeds]


# The in-domain-like sources of the mixed protocol pool and the capability each is like.
DOMAIN_OF_SOURCE = {source: group.domain for group in CPU_MIX_2K for source in group.sources
                    if group.domain != "background"}


@dataclass(frozen=True)
class OracleParams:
    budget_ratio: float = 0.1
    """Share of the pool; split equally over the capabilities whose in-domain-like sources the pool holds."""
    seed: int = 0


def _oracle(inp: SelectionInput, params: OracleParams) -> list[Chosen]:
    k = selection.budget(len(inp.ids), params.budget_ratio)
    domains = [DOMAIN_OF_SOURCE.get(source) for source in inp.groups["source"]]
    inside = [i for i, d in enumerate(domains) if d is not None]
    if not inside:
        raise MethodInputError(f"oracle_source needs in-domain-like sources in the pool ({sorted(DOMAIN_OF_SOURCE)}); "
                               "this pool has none: use the cpu-mix-2k protocol pool")
    picked = selection.balanced_random([inp.ids[i] for i in inside], [domains[i] for i in inside], k, params.seed)
    return [Chosen(ALL, [inside[i] for i in picked], None,
                   {"budget_ratio": params.budget_ratio, "seed": params.seed, "balanced_by": "domain of source"},
                   params.budget_ratio)]


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
STRATIFIED = Method(
    name="random_stratified", description="Seeded random subsets stratified by pool source x length quintile "
                                          "(proportional allocation): the protocol's lower-variance random reference.",
    scorer=None, params=RandomParams, select=_stratified,
    policy="each source x length-quintile stratum its share (largest remainders), sha256(seed:id) order inside",
    source="selection-quality.md §3.3", cost="none",
    recipe="strata = source + length quintile of the output (rank * 5 // N); quota k * |stratum| / N, the largest "
           "remainders (ties by name) get one more; inside a stratum ids by sha256(f'{seed}:{id}').")
ORACLE = Method(
    name="oracle_source", description="The ceiling reference: rows of the in-domain-like sources only, an equal "
                                      "share per capability, seeded.",
    scorer=None, params=OracleParams, select=_oracle,
    policy="equal share per capability among in-domain-like source rows (balanced random)",
    source="selection-quality.md §3.3 (oracle-source)", cost="none (it reads the source labels)",
    recipe="rows whose source is in-domain-like (lib/data/mixed_pool.py), grouped by capability; balanced_random "
           "over the groups.")
FULL = Method(
    name="full", description="The whole kept pool: the reference every subset is compared with.", scorer=None,
    params=FullParams, select=_full, policy="every row", source="reference", cost="none",
    recipe="every kept pool id.")
