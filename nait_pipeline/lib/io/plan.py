"""Materialization order from the asset graph itself, so the graph is written once (in the assets' deps).

The plan for some target assets is their upstream closure, cut into levels by the longest path from a
root (every asset of a level has all its parents in earlier levels), and each level split by how its
assets are partitioned: a step runs its assets together once per partition key (all shards, all
capabilities) or once, and every step finishes before the next begins. The graph is plain data here
(names, parents, partitioning); the CLI reads it from the Dagster definitions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PARTITION_ORDER = ("none", "capability", "shard")  # inside a level: unpartitioned first, then the cheap keys


@dataclass(frozen=True)
class Node:
    name: str
    parents: frozenset[str]
    partitioning: str = "none"  # "none" | "capability" | "shard"


@dataclass(frozen=True)
class Step:
    assets: tuple[str, ...]
    partitioning: str


class PlanError(ValueError):
    """Targets the graph does not hold, or a cycle."""


def upstream_closure(graph: Mapping[str, Node], targets: Iterable[str]) -> set[str]:
    """The targets and every asset they depend on, transitively (parents outside ``graph``, such as
    observed source assets, are not materialized and are left out)."""
    targets = list(targets)
    unknown = sorted(set(targets) - set(graph))
    if unknown:
        raise PlanError(f"no asset(s) {unknown} in the graph")
    seen: set[str] = set()
    stack = list(targets)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(parent for parent in graph[name].parents if parent in graph)
    return seen


def plan(graph: Mapping[str, Node], targets: Iterable[str], done: Iterable[str] = ()) -> list[Step]:
    """Steps that materialize ``targets`` and their upstream closure in dependency order, leaving out
    the assets in ``done`` (an earlier phase's); assets of one step are sorted by name."""
    closure = upstream_closure(graph, targets)
    unplanned = sorted({graph[n].partitioning for n in closure} - set(PARTITION_ORDER))
    if unplanned:
        raise PlanError(f"no rule for partitioning {unplanned} (assets "
                        f"{sorted(n for n in closure if graph[n].partitioning in unplanned)})")
    level: dict[str, int] = {}

    def depth(name: str, path: tuple[str, ...] = ()) -> int:
        if name in path:
            raise PlanError(f"the asset graph has a cycle: {' -> '.join((*path, name))}")
        if name not in level:
            parents = [p for p in graph[name].parents if p in closure]
            level[name] = 1 + max((depth(p, (*path, name)) for p in parents), default=-1)
        return level[name]

    for name in sorted(closure):
        depth(name)
    skip = set(done)
    steps = []
    for number in sorted(set(level.values())):
        for partitioning in PARTITION_ORDER:
            assets = sorted(n for n in closure if level[n] == number and graph[n].partitioning == partitioning
                            and n not in skip)
            if assets:
                steps.append(Step(tuple(assets), partitioning))
    return steps


def key_ranges(keys: Iterable[str], order: list[str], max_len: int) -> list[tuple[str, str]]:
    """``keys`` as (first, last) ranges of consecutive entries of ``order`` (a partitions definition's keys),
    each at most ``max_len`` long: a range run covers exactly the keys asked for, never one between them."""
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    wanted = set(keys)
    unknown = sorted(wanted - set(order))
    if unknown:
        raise PlanError(f"partition key(s) {unknown[:5]} are not among the {len(order)} known keys")
    ranges, current = [], []
    for key in order:
        if key in wanted and len(current) < max_len:
            current.append(key)
            continue
        if current:
            ranges.append((current[0], current[-1]))
        current = [key] if key in wanted else []
    if current:
        ranges.append((current[0], current[-1]))
    return ranges
