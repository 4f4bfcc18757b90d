"""The protocol's statistics on synthetic runs x items drawn from the noise model, with and without a
known effect: the interval's false-positive rate near its nominal level, its power where the
planning arithmetic says so, the bootstrap agreeing, and Holm / intersection on hand values."""

from __future__ import annotations

import numpy as np
import pytest

from nait_pipeline.lib.evaluation import statistics as st

# Planning values of selection-quality.md §3.2 (long-answer NLL, nats/token): run SD 0.008, run x item 0.04.
RUN_SD, INTERACTION_SD, ITEM_SD = 0.008, 0.04, 0.5


def draw(rng, runs_method: int, runs_reference: int, items: int, effect: float):
    difficulty = rng.normal(0, ITEM_SD, items)  # shared by every model: cancels in the difference

    def arm(runs: int, shift: float) -> np.ndarray:
        return (shift + rng.normal(0, RUN_SD, (runs, 1)) + difficulty[None]
                + rng.normal(0, INTERACTION_SD, (runs, items)))

    return arm(runs_method, effect), arm(runs_reference, 0.0)


def test_the_interval_has_its_nominal_false_positive_rate_under_no_effect():
    rng = np.random.default_rng(0)
    trials = 2000
    false_positives = sum(st.compare(*draw(rng, 2, 5, 200, 0.0)).better for _ in range(trials))
    rate = false_positives / trials
    assert 0.03 <= rate <= 0.07, rate  # nominal 0.05 (binomial SD ~0.005)


def test_a_known_effect_is_detected_with_the_planned_power():
    rng = np.random.default_rng(1)
    trials = 600
    # MDE of the proposed design (200 items, 5 + 2 runs) is ~0.021: an effect of 0.03 should be seen most times.
    power = np.mean([st.compare(*draw(rng, 2, 5, 200, 0.03)).better for _ in range(trials)])
    assert power > 0.8, power
    covered = np.mean([(lambda c: c.lower <= 0.03 <= c.upper)(st.compare(*draw(rng, 2, 5, 200, 0.03)))
                       for _ in range(trials)])
    assert covered > 0.85  # two one-sided 95 % bounds: 90 % nominal coverage


def test_an_interval_ignoring_runs_would_not_hold_its_level():
    """Why run variance is in the SE: an item-only paired interval on 1 + 3 runs rejects far too often."""
    rng = np.random.default_rng(2)
    trials, wrong = 1000, 0
    for _ in range(trials):
        method, reference = draw(rng, 1, 3, 24, 0.0)
        differences = method.mean(0) - reference.mean(0)
        se = differences.std(ddof=1) / np.sqrt(len(differences))
        wrong += differences.mean() - 1.714 * se > 0
    assert wrong / trials > 0.1


def test_fewer_than_two_runs_on_a_side_gives_no_interval():
    rng = np.random.default_rng(3)
    method, reference = draw(rng, 1, 5, 50, 0.1)
    result = st.compare(method, reference)
    assert result.lower is None and not result.better and "2 runs on each side" in result.no_interval
    assert result.delta == pytest.approx(method.mean() - reference.mean())
    assert "no interval" in result.label()
    assert st.bootstrap(method, reference) is None


def test_compare_on_hand_made_runs():
    method = np.array([[1.0, 2.0, 3.0], [1.2, 2.2, 3.2]])  # run means 2.0, 2.2
    reference = np.array([[0.9, 1.9, 2.9], [0.7, 1.7, 2.7]])  # run means 1.9, 1.7
    result = st.compare(method, reference)
    assert result.delta == pytest.approx(0.3)
    # pooled run variance (0.02 + 0.02) / 2 = 0.02; item differences all 0.3: no item term
    assert result.se == pytest.approx(np.sqrt(0.02 * (1 / 2 + 1 / 2)))
    assert result.df == 2 and result.lower == pytest.approx(0.3 - 2.919986 * result.se, rel=1e-5)
    with pytest.raises(ValueError, match="items"):
        st.compare(method, reference[:, :2])
    with pytest.raises(ValueError, match=r"non-finite.*\[\[1, 2\]\]"):
        st.compare(method, np.array([[0.9, 1.9, 2.9], [0.7, 1.7, np.nan]]))


def test_the_bootstrap_agrees_with_the_t_interval():
    rng = np.random.default_rng(4)
    method, reference = draw(rng, 3, 5, 200, 0.03)
    t_based = st.compare(method, reference)
    low, high = st.bootstrap(method, reference, strata=["a"] * 100 + ["b"] * 100, replicates=1000)
    assert low < t_based.delta < high
    assert abs((high - low) - (t_based.upper - t_based.lower)) < 0.5 * (t_based.upper - t_based.lower)


def test_holm_and_the_intersection_union_test():
    assert st.holm({"a": 0.01, "b": 0.02, "c": 0.04}) == {"a": True, "b": True, "c": True}
    # 0.01 <= 0.05/3, then 0.03 > 0.05/2 stops: c is not rejected even though 0.04 <= 0.05
    assert st.holm({"a": 0.01, "b": 0.03, "c": 0.04}) == {"a": True, "b": False, "c": False}
    yes = st.Comparison(0.1, 2, 5, 10, se=0.01, df=5, lower=0.05, upper=0.15)
    no = st.Comparison(0.1, 2, 5, 10, se=0.1, df=5, lower=-0.1, upper=0.3)
    assert st.beats_on_every_capability({"math": yes, "code": yes})
    assert not st.beats_on_every_capability({"math": yes, "code": no})
    assert not st.beats_on_every_capability({})


def test_interval_table_from_per_item_rows(tmp_path):
    """Per-item evaluation rows of 5 random runs, 2 runs of a method with a real effect on math and code
    (none on reasoning), 1 run of another method and the full pool: the table's intervals, the
    intersection test and the no-interval rows."""
    from nait_pipeline.lib.evaluation import intervals
    from nait_pipeline.lib.evaluation.comparison import Run

    rng = np.random.default_rng(5)
    runs, rows = [], []
    effects = {"math": 0.05, "code": 0.05, "reasoning": 0.0}
    arms = {"random": (5, 0.0), "nait_c:all": (2, 1.0), "length": (1, 1.0), "full": (1, 0.0), "base": (1, 0.0)}
    for label, (count, scale) in arms.items():
        for seed in range(count):
            version = f"{label}-{seed}"
            runs.append(Run(version, label, 10, 0.0, 0, 0.0, 0))
            for capability, effect in effects.items():
                shift = rng.normal(0, RUN_SD) + scale * effect
                for item in range(200):
                    value = shift + rng.normal(0, INTERACTION_SD) - item / 200
                    rows.append({"subset_version": version, "capability": capability, "benchmark": "b",
                                 "item_id": f"{capability}-{item}", "metric": "gold_logprob_per_token",
                                 "value": value, "status": "ok"})
    rows.append({"subset_version": "random-0", "capability": "math", "benchmark": "b", "item_id": "x",
                 "metric": "gold_logprob_per_token", "value": None, "status": "not_computable"})
    table = intervals.interval_table("t", runs, rows, bootstrap_replicates=200)
    cell = {(r["method"], r["reference"], r["eval_capability"]): r for r in table.to_pylist()}
    assert cell[("nait_c:all", "random", "math")]["better"] and cell[("nait_c:all", "random", "code")]["better"]
    assert cell[("nait_c:all", "random", "math")]["items"] == 200  # the not-computable item is left out
    assert not cell[("nait_c:all", "random", "reasoning")]["better"]
    assert intervals.beats_random_everywhere(table) == {"full": False, "length": False, "nait_c:all": False}
    single = cell[("length", "random", "math")]
    assert single["lower"] is None and "no interval" in single["label"]
    assert cell[("nait_c:all", "full", "math")]["no_interval"]  # one full-pool run
    # with a base model the references are compared too (against base and each other), never with themselves
    assert ("random", "base", "math") in cell and ("full", "random", "math") in cell
    assert all(r["method"] != r["reference"] for r in table.to_pylist())
    report = intervals.report_markdown(table)
    assert "| nait_c:all | random |" in report and "[" in report
    length_row = next(line for line in report.splitlines() if line.startswith("| length | random |"))
    assert "(no interval)" in length_row and "needs" not in length_row  # the reason is said once, below
    assert report.splitlines()[-1].startswith("No interval: ") and "needs >= 2 runs on each side" in report
    # Holm's family: the method x capability tests against random that have a p-value (nait_c's three;
    # length has one run, full and base are references); a correction only removes rejections.
    family = {k: r for k, r in cell.items() if r["better_holm"] is not None}
    assert set(family) == {("nait_c:all", "random", c) for c in effects}
    assert all(r["better"] or not r["better_holm"] for r in family.values())
    assert {k[2]: r["better_holm"] for k, r in family.items()} == {"math": True, "code": True, "reasoning": False}
    assert "after Holm's correction over the 3 method × capability comparisons" in report
    assert " †" in next(line for line in report.splitlines() if line.startswith("| nait_c:all | random |"))
    png = intervals.plot(table, tmp_path / "intervals.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert intervals.plot(table, tmp_path / "none.png", reference="nothing") is None



def test_a_fixed_reference_uses_only_the_methods_run_variance():
    method = np.array([[1.0, 2.0, 3.0], [1.2, 2.2, 3.2]])  # run means 2.0, 2.2
    base = np.array([[0.9, 1.9, 2.9]])  # one deterministic model
    result = st.compare(method, base, fixed_reference=True)
    assert result.delta == pytest.approx(0.2) and result.df == 1
    assert result.se == pytest.approx(np.sqrt(0.02 / 2))  # var of run means 0.02, over 2 runs; items agree
    assert st.compare(method[:1], base, fixed_reference=True).no_interval.startswith("needs >= 2 method runs")
    assert st.compare(method, base).lower is None  # without the flag a single reference run gives no interval


def test_run_keys():
    from nait_pipeline.lib.evaluation import runs

    assert runs.parse_run_key("nait_c-all-abc") == ("nait_c-all-abc", 0)
    assert runs.parse_run_key("nait_c-all-abc@order2") == ("nait_c-all-abc", 2)
    assert runs.parse_run_key("base") == (None, 0)
    assert runs.parse_run_key("x@order0") == ("x@order0", 0)  # order 0 is the version itself, never a key
    assert runs.replicate_keys("v", 3) == ["v", "v@order1", "v@order2"]
    assert runs.run_seed(0, "v@order2") == 2 and runs.run_seed(5, "v") == 5 and runs.run_seed(5, "base") == 5
