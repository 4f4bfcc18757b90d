"""The method registry: every selection method, by name. Methods live in family packages (``nait``,
``rds``, ``gradients``, ``lp``, ``baselines``), each method's math in its own Dagster-free ``*_math``
module. Adding a method means writing its module (a :class:`~nait_pipeline.lib.methods.base.Scorer`
and/or :class:`~nait_pipeline.lib.methods.base.Method`) and one line here; the Dagster assets, the
planner, comparison, protocol, export and dump pick it up from this list."""

from __future__ import annotations

from nait_pipeline.lib.methods.base import ALL, Method, MethodInputError, Scorer
from nait_pipeline.lib.methods.baselines import facility_location, kcenter, pool_stats, random_methods
from nait_pipeline.lib.methods.gradients import bids, g2is, less
from nait_pipeline.lib.methods.lp import lp
from nait_pipeline.lib.methods.nait import nait_c_method, nait_method
from nait_pipeline.lib.methods.rds import rds

METHODS: dict[str, Method] = {m.name: m for m in [
    nait_method.METHOD,
    nait_c_method.METHOD,
    nait_c_method.LDA_METHOD,
    rds.ROUND_ROBIN,
    rds.TOP_B,
    *pool_stats.PERPLEXITY_METHODS,
    pool_stats.LONGEST,
    random_methods.UNIFORM,
    random_methods.BALANCED,
    random_methods.STRATIFIED,
    random_methods.ORACLE,
    random_methods.FULL,
    *lp.METHODS,
    less.METHOD,
    bids.METHOD,
    g2is.METHOD,
    kcenter.METHOD,
    facility_location.METHOD,
]}


def scorers() -> dict[str, Scorer]:
    """Every scorer some registered method uses, once."""
    return {m.scorer.name: m.scorer for m in METHODS.values() if m.scorer is not None}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise MethodInputError(f"unknown method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name]


__all__ = ["ALL", "METHODS", "Method", "MethodInputError", "Scorer", "get_method", "scorers"]
