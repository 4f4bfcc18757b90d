"""The materialization plan from a hand-made graph: levels by longest path, steps by partitioning."""

from __future__ import annotations

import pytest

from nait_pipeline.lib.io.plan import Node, PlanError, Step, plan, upstream_closure


def graph(*nodes: Node) -> dict[str, Node]:
    return {node.name: node for node in nodes}


GRAPH = graph(
    Node("pool", frozenset({"source_files"})),  # an observed source outside the graph
    Node("model", frozenset()),
    Node("features", frozenset({"pool", "model"}), "shard"),
    Node("targets", frozenset({"model"}), "capability"),
    Node("scores", frozenset({"features", "targets"}), "capability"),
    Node("cheap_subsets", frozenset({"pool"})),
    Node("subsets", frozenset({"scores", "cheap_subsets"})),
    Node("unrelated", frozenset({"model"})),
)


def test_the_closure_leaves_out_what_the_targets_do_not_need():
    assert upstream_closure(GRAPH, ["subsets"]) == set(GRAPH) - {"unrelated"}


def test_steps_follow_the_longest_path_and_group_by_partitioning():
    assert plan(GRAPH, ["subsets"]) == [
        Step(("model", "pool"), "none"),
        Step(("cheap_subsets",), "none"), Step(("targets",), "capability"), Step(("features",), "shard"),
        Step(("scores",), "capability"),
        Step(("subsets",), "none"),
    ]


def test_a_later_phase_skips_what_an_earlier_one_ran():
    done = upstream_closure(GRAPH, ["cheap_subsets"])
    assert [step.assets for step in plan(GRAPH, ["subsets"], done=done)] == [
        ("model",), ("targets",), ("features",), ("scores",), ("subsets",)]


def test_unknown_targets_cycles_and_partitionings_are_refused():
    with pytest.raises(PlanError, match="no asset"):
        plan(GRAPH, ["nothing"])
    with pytest.raises(PlanError, match="cycle: a -> b -> a"):
        plan(graph(Node("a", frozenset({"b"})), Node("b", frozenset({"a"}))), ["a"])
    with pytest.raises(PlanError, match="no rule for partitioning"):
        plan(graph(Node("a", frozenset(), "weekly")), ["a"])


def test_keys_become_ranges_of_consecutive_known_keys():
    from nait_pipeline.lib.io.plan import key_ranges

    order = ["a", "b", "c", "d", "e", "f", "g"]
    assert key_ranges(["a", "b", "c", "d", "e"], order, 2) == [("a", "b"), ("c", "d"), ("e", "e")]
    # a key not asked for (a shard no longer in the pool) splits a range rather than joining it
    assert key_ranges(["a", "b", "d", "e", "g"], order, 8) == [("a", "b"), ("d", "e"), ("g", "g")]
    assert key_ranges([], order, 8) == []
    with pytest.raises(PlanError, match=r"\['z'\]"):
        key_ranges(["a", "z"], order, 8)
