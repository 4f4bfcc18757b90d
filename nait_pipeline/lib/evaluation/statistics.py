"""Comparing a method with a reference on per-item scores, with uncertainty from runs and items
(selection-quality.md sections 3.2 and 3.5).

Model: run j, item i: ``y_ji = mu + tau·[j in M] + u_j + v_i + e_ji`` (run effect u, item difficulty v,
run x item interaction e). Every model sees the same items, so item difficulty cancels in the
difference; what remains is run-to-run variance (each arm's runs) and the item-level disagreement.

- ``Delta = mean_M Y_j - mean_R Y_j`` with ``Y_j`` a run's mean over the common items;
- ``SE^2 = s^2 (1/r_R + 1/r_M) + s_d^2 / n``: s^2 the pooled within-arm variance of the run means
  (df = r_R + r_M - 2), s_d^2 the variance over items of the per-item differences of the arm means
  (slightly conservative: it counts the interaction twice);
- one-sided 95 % bounds ``Delta ± t_{0.95, df} · SE``; "M better than R" iff the lower bound > 0;
- a two-way bootstrap (items within strata, runs within each arm, run part inflated by
  sqrt(r / (r - 1))) as a cross-check;
- fewer than 2 runs on either side: no run variance can be estimated for that side, so no interval
  is given, and the result says so.

Families: the primary claim "beats the reference on every capability" is an intersection-union test
(each capability's one-sided test at alpha, no correction); secondary comparisons are Holm-corrected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    delta: float
    runs_method: int
    runs_reference: int
    items: int
    se: float | None = None
    df: int | None = None
    lower: float | None = None  # one-sided (1 - alpha) lower bound
    upper: float | None = None  # one-sided (1 - alpha) upper bound
    p_value: float | None = None  # one-sided, H0: Delta <= 0
    no_interval: str | None = None  # why no interval is given

    @property
    def better(self) -> bool:
        return self.lower is not None and self.lower > 0

    def label(self, digits: int = 3) -> str:
        """``Δ [low, high]``, or ``Δ (no interval: why)``."""
        if self.lower is None:
            return f"{self.delta:+.{digits}f} (no interval: {self.no_interval})"
        return f"{self.delta:+.{digits}f} [{self.lower:+.{digits}f}, {self.upper:+.{digits}f}]"


def _as_runs(values, what: str) -> np.ndarray:
    array = np.asarray(values, np.float64)
    if array.ndim != 2:
        raise ValueError(f"{what}: expected [runs, items], got shape {array.shape}")
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[:5].tolist()
        raise ValueError(f"{what}: non-finite per-item scores at [run, item] {bad}")
    return array


def compare(method_runs, reference_runs, alpha: float = ALPHA, fixed_reference: bool = False) -> Comparison:
    """Method against reference on the same items: ``[runs, items]`` arrays of per-item scores
    (higher is better), items in the same order on both sides. ``fixed_reference``: the reference is
    one model with no run-to-run variance (the base model, not trained), so only the method's runs
    enter the run term (df = r_M - 1)."""
    from scipy import stats

    method = _as_runs(method_runs, "method")
    reference = _as_runs(reference_runs, "reference")
    if method.shape[1] != reference.shape[1]:
        raise ValueError(f"method has {method.shape[1]} items, reference {reference.shape[1]}: compare common items")
    r_m, r_r, n = len(method), len(reference), method.shape[1]
    if r_m == 0 or r_r == 0 or n == 0:
        raise ValueError(f"nothing to compare: {r_m} method run(s), {r_r} reference run(s), {n} item(s)")
    run_means_m, run_means_r = method.mean(1), reference.mean(1)
    delta = float(run_means_m.mean() - run_means_r.mean())
    if fixed_reference:
        if r_m < 2:
            return Comparison(delta, r_m, r_r, n, no_interval=f"needs >= 2 method runs against a fixed reference "
                                                                f"(method {r_m}): run-to-run variance unknown")
        df = r_m - 1
        run_term = float(run_means_m.var(ddof=1)) / r_m
    elif r_m < 2 or r_r < 2:
        return Comparison(delta, r_m, r_r, n, no_interval=f"needs >= 2 runs on each side (method {r_m}, "
                                                            f"reference {r_r}): run-to-run variance unknown")
    else:
        df = r_m + r_r - 2
        pooled = (((run_means_m - run_means_m.mean()) ** 2).sum()
                  + ((run_means_r - run_means_r.mean()) ** 2).sum()) / df
        run_term = pooled * (1 / r_r + 1 / r_m)
    differences = method.mean(0) - reference.mean(0)
    item_var = float(differences.var(ddof=1)) if n > 1 else 0.0
    se = float(np.sqrt(run_term + item_var / n))
    t = float(stats.t.ppf(1 - alpha, df))
    p = float(stats.t.sf(delta / se, df)) if se > 0 else (0.0 if delta > 0 else 1.0)
    return Comparison(delta, r_m, r_r, n, se=se, df=df, lower=delta - t * se, upper=delta + t * se, p_value=p)


def bootstrap(method_runs, reference_runs, strata: Sequence[str] | None = None, replicates: int = 2000,
              seed: int = 0, alpha: float = ALPHA) -> tuple[float, float] | None:
    """Percentile one-sided (1 - alpha) bounds of Delta from a two-way bootstrap: items resampled within
    their strata, runs within each arm; each arm's run part inflated by sqrt(r / (r - 1)). None with
    fewer than 2 runs on a side."""
    method = _as_runs(method_runs, "method")
    reference = _as_runs(reference_runs, "reference")
    if len(method) < 2 or len(reference) < 2:
        return None
    rng = np.random.default_rng(seed)
    n = method.shape[1]
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(np.asarray(strata) == s)
                                                    for s in sorted(set(strata))]
    deltas = np.empty(replicates)
    for b in range(replicates):
        items = np.concatenate([rng.choice(g, len(g)) for g in groups])
        arm_means = []
        for arm in (method, reference):
            per_run = arm[:, items].mean(1)
            drawn = per_run[rng.integers(0, len(arm), len(arm))].mean()
            inflate = np.sqrt(len(arm) / (len(arm) - 1))
            arm_means.append(per_run.mean() + inflate * (drawn - per_run.mean()))
        deltas[b] = arm_means[0] - arm_means[1]
    return float(np.quantile(deltas, alpha)), float(np.quantile(deltas, 1 - alpha))


def beats_on_every_capability(comparisons: Mapping[str, Comparison]) -> bool:
    """Intersection-union test: every capability's one-sided test passes at its own alpha."""
    return bool(comparisons) and all(c.better for c in comparisons.values())


def holm(p_values: Mapping[str, float], alpha: float = ALPHA) -> dict[str, bool]:
    """Holm's step-down rejections for a family of one-sided p-values."""
    order = sorted(p_values, key=lambda k: (p_values[k], k))
    rejected, stopped = {}, False
    for rank, key in enumerate(order):
        stopped = stopped or p_values[key] > alpha / (len(order) - rank)
        rejected[key] = not stopped
    return rejected
