"""A featurization killed with SIGKILL must not block the ones after it (the cpu_heavy slot it held)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import dagster as dg

from nait_pipeline.defs.recovery import first_event_by_pid, process_alive, recover_dead_runs, run_is_dead
from nait_pipeline.lib.io.settings import PROJECT_ROOT

SLOW_FEATURIZATION = textwrap.dedent("""
    import sys, time
    import dagster as dg
    from nait_pipeline.defs.assets import features
    from nait_pipeline.defs.resources import LakeResource
    real = features.fz.featurize
    def slow(*args, **kwargs):
        time.sleep(float(sys.argv[2]))
        return real(*args, **kwargs)
    features.fz.featurize = slow
    resource = LakeResource(data_dir=sys.argv[3], store_dir=sys.argv[4], model=sys.argv[5])
    result = dg.materialize([features.pool_activations], partition_key=sys.argv[1], instance=dg.DagsterInstance.get(),
                            resources={"pipeline": resource})
    print("success" if result.success else "failure")
""")


def test_a_killed_featurization_is_recovered_and_the_next_one_runs(model_dir, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    data, store = tmp_path / "data", tmp_path / "store"
    (data / "pools").mkdir(parents=True)
    (data / "pools" / "tiny.jsonl").write_text("".join(
        json.dumps({"instruction": f"Say {i}.", "output": f"{i}"}) + "\n" for i in range(3)))
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    args = [str(data), str(store), str(model_dir)]
    from nait_pipeline.defs.assets.model import base_model
    from nait_pipeline.defs.assets.pool import it_pool
    from nait_pipeline.defs.resources import LakeResource

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        resource = LakeResource(data_dir=args[0], store_dir=args[1], model=args[2])
        assert dg.materialize([base_model, it_pool], instance=instance, resources={"pipeline": resource}).success
        shard = instance.get_dynamic_partitions("pool_shards")[0]

        victim = subprocess.Popen([sys.executable, "-c", SLOW_FEATURIZATION, shard, "600", *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while not instance.event_log_storage.get_concurrency_info("cpu_heavy").claimed_slots:
            assert time.time() < deadline and victim.poll() is None, victim.stdout.read().decode()[-2000:]
            time.sleep(0.5)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        # The defect: the dead run still holds the only cpu_heavy slot, so the next run would wait forever.
        (held,) = instance.event_log_storage.get_concurrency_info("cpu_heavy").claimed_slots
        dead_run = instance.get_run_by_id(held.run_id)
        assert dead_run.status == dg.DagsterRunStatus.STARTED

        recovered = recover_dead_runs(instance)
        assert [r.run_id for r in recovered] == [held.run_id]
        assert instance.get_run_by_id(held.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info("cpu_heavy").claimed_slots
        assert recover_dead_runs(instance) == []  # nothing left to do; live runs are never touched

        after = subprocess.run([sys.executable, "-c", SLOW_FEATURIZATION, shard, "0", *args], env=env,
                               capture_output=True, text=True, timeout=300)
        assert after.stdout.strip().endswith("success"), after.stdout[-2000:] + after.stderr[-2000:]


def _own_start_time() -> float:
    """This process's start time, read the way `process_alive` reads it."""
    with open("/proc/stat") as handle:
        boot = next(float(line.split()[1]) for line in handle if line.startswith("btime"))
    with open(f"/proc/{os.getpid()}/stat") as handle:
        return boot + int(handle.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")


def test_a_run_queued_before_its_process_started_is_alive():
    """A CI run lost a clicked run this way: queued at t, launched by the daemon 8 s later; judging the
    new process against the enqueue event took it for a reused pid. Each pid is judged by its own events."""
    started = _own_start_time()
    enqueued, first_own_event = started - 60.0, started + 0.5
    events = [(None, enqueued), (os.getpid(), first_own_event + 3.0), (os.getpid(), first_own_event)]
    assert first_event_by_pid(events) == {os.getpid(): first_own_event}
    assert not process_alive(os.getpid(), enqueued)  # what the old rule asked
    assert not run_is_dead(first_event_by_pid(events))
    # the same pid with events from before this process existed: a reused pid, the run's writer is dead
    assert run_is_dead({os.getpid(): started - 60.0})
    assert not run_is_dead({})  # nothing written by a run process yet: not judged
