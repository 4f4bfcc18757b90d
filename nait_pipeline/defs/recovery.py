"""Recover from runs whose process died (SIGKILL, OOM, a closed terminal).

A killed run keeps its status (STARTED) and the concurrency slots it claimed: with `cpu_heavy`
limited to one, every later featurization would wait on it forever. A run is dead when the process
that wrote its events no longer exists (or is a newer process that reused the pid): it is marked
failed and its slots are freed. Slots still held by runs that already finished (a run marked failed
by hand) are freed too. The CLI does this before every materialization, the `dead_run_reaper`
sensor every minute, and `nait-pipeline recover` on demand. Runs on other machines are out of reach:
this pipeline's instance runs on one machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import dagster as dg

ACTIVE = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
POOLS = ("cpu_heavy", "duckdb_writer")


@dataclass(frozen=True)
class Recovered:
    run_id: str
    reason: str


def _boot_time() -> float:
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("btime"):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def process_alive(pid: int, not_after: float) -> bool:
    """The process ``pid`` exists and started no later than ``not_after`` (a Unix time), so a pid
    reused by a newer process does not keep a dead run alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return True  # no /proc: trust the pid
    return started <= not_after + 1.0


def first_event_by_pid(events) -> dict[int, float]:
    """When each process first wrote an event for a run, from ``(pid, timestamp)`` pairs (pid None for
    events written outside a run process, such as the webserver's enqueue)."""
    first: dict[int, float] = {}
    for pid, timestamp in events:
        if pid:
            first[pid] = min(timestamp, first.get(pid, timestamp))
    return first


def run_is_dead(first_by_pid: dict[int, float]) -> bool:
    """No process that wrote the run's events is alive. Each pid is judged against its own first event:
    a run queued long before its process started (the run's first event is the enqueue) is alive."""
    return bool(first_by_pid) and not any(process_alive(pid, first) for pid, first in first_by_pid.items())


def recover_dead_runs(instance: dg.DagsterInstance) -> list[Recovered]:
    recovered = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(ACTIVE))):
        # a run whose process has not written yet has no pid: the launcher's own timeout handles it
        first_by_pid = first_event_by_pid((r.dagster_event.pid if r.dagster_event else None, r.timestamp)
                                          for r in instance.all_logs(run.run_id))
        if not run_is_dead(first_by_pid):
            continue
        message = f"the run's process (pid {sorted(first_by_pid)}) is gone: marked failed and its slots freed"
        instance.report_run_failed(run, message)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        recovered.append(Recovered(run.run_id, message))
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for pool in POOLS:
            for run_id in {slot.run_id for slot in storage.get_concurrency_info(pool).claimed_slots}:
                run = instance.get_run_by_id(run_id)
                if run is None or run.is_finished:
                    storage.free_concurrency_slots_for_run(run_id)
                    recovered.append(Recovered(run_id, f"finished run still held a {pool} slot: freed"))
    return recovered


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def dead_run_reaper(context: dg.SensorEvaluationContext):
    """Mark runs whose process died as failed and free the concurrency slots they held, so a killed
    featurization never blocks the ones after it."""
    recovered = recover_dead_runs(context.instance)
    for item in recovered:
        context.log.warning(f"{item.run_id}: {item.reason}")
    return dg.SkipReason(f"recovered {len(recovered)} run(s)" if recovered else "no dead runs")
