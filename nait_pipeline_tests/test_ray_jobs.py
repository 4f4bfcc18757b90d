"""A run's shards as a Ray Job, through the Jobs API of a separate Ray head started here (the multi-node
path: the run holds no Ray connection, a fresh JobSubmissionClient per run, every shard verified from the
lake). Slow: a head with its dashboard takes ~10 s to start on two cores."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest

from nait_pipeline.lib.execution.executors import ShardExecutor, ShardFailedError
from nait_pipeline.lib.execution.shard_tasks import FORWARD, ShardTask, verify_outcome
from nait_pipeline.lib.features.featurize import FeaturizerSpec
from nait_pipeline.lib.io.lake import read_metadata
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline_tests.test_ray_executor import ingest, write_pools

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_jobs_address():
    """A Ray head with its Jobs API on 127.0.0.1 (2 CPUs, no token auth), its processes killed afterwards."""
    from ray.job_submission import JobSubmissionClient

    temp_dir = f"/tmp/rj-{uuid.uuid4().hex[:8]}"
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    dashboard = _free_port()
    head = subprocess.Popen([os.path.join(bin_dir, "ray"), "start", "--head", "--block", f"--port={_free_port()}",
                             "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dashboard}", "--disable-usage-stats",
                             "--object-store-memory=100000000", f"--temp-dir={temp_dir}"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    address, deadline = f"http://127.0.0.1:{dashboard}", time.time() + 120
    try:
        while True:
            try:
                JobSubmissionClient(address)
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.time() < deadline and head.poll() is None, "the Ray head did not start"
                time.sleep(1)
        yield address
    finally:
        head.send_signal(signal.SIGINT)
        try:
            head.wait(20)
        except subprocess.TimeoutExpired:
            pass
        # What a head leaves behind carries its temp dir on its command line.
        found = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
        for pid in found:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_ray_job_featurizes_the_shards_the_local_executor_does(ray_jobs_address, model_dir, tmp_path):
    data = tmp_path / "data"
    write_pools(data)
    stores = {}
    for name in ("local", "job"):
        resource = LakeResource(data_dir=str(data), store_dir=str(tmp_path / name), model=str(model_dir))
        with dg.instance_for_test() as instance:
            shards = ingest(instance, resource)
        stores[name] = resource.settings
    tasks = [ShardTask(FORWARD, s, {"spec": FeaturizerSpec(dtype="float32"), "device": "cpu"}) for s in shards]
    with ShardExecutor("local").start(stores["local"], len(tasks)) as workers:
        workers.run(tasks, lambda task, outcome: verify_outcome(stores["local"], task, outcome))
    lines = []
    executor = ShardExecutor("ray", address=ray_jobs_address, workers=2, gpus_per_worker=0)
    with executor.start(stores["job"], len(tasks), log=lines.append) as workers:
        assert workers.device("auto") == "cpu"
        outcomes = workers.run(tasks, lambda task, outcome: verify_outcome(stores["job"], task, outcome))
    assert [o.shard for o in outcomes] == shards
    assert all("@" in o.worker for o in outcomes) and len({o.worker for o in outcomes}) == 2  # reported, by 2
    assert any("submitted" in line for line in lines)
    for shard in shards:
        assert read_metadata(stores["job"].layout.pool_activations(shard))["store_version"] == \
            read_metadata(stores["local"].layout.pool_activations(shard))["store_version"]
    # A job that fails names the shard left unfinished and shows the end of the job's log.
    broken = [ShardTask(FORWARD, "no-such-shard", tasks[0].params)]
    with executor.start(stores["job"], 1) as workers:
        with pytest.raises(ShardFailedError, match=r"ended FAILED with shard\(s\) \['no-such-shard'\] unfinished"):
            workers.run(broken, lambda *_: None)
