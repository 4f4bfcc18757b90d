"""A run's shards as one Ray Job on a multi-node cluster (``[ray] address = "http://head:8265"``).

The run submits a job through a fresh ``JobSubmissionClient`` (one per run: a client kept across runs is
how messages get lost); the job's own driver, on the cluster, hands the shards to workers there exactly as
the in-process Ray executor does and prints one line per finished shard. The run relays the job's log and
verifies every shard's files itself, from the lake: a dropped or garbled line changes nothing, and a job
that ends without a shard's files fails the run naming the shard. The run process needs neither a Ray
client connection nor the cluster's network beyond the Jobs API.
"""

from __future__ import annotations

import base64
import json
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from nait_pipeline.lib.execution.shard_tasks import GRADIENTS, ShardOutcome, ShardTask, expected_paths
from nait_pipeline.lib.io.lake import read_metadata
from nait_pipeline.lib.io.settings import Settings

OUTCOME_PREFIX = "NAIT_SHARD_DONE "
POLL_SECONDS = 1.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def encode(value: object) -> str:
    return base64.urlsafe_b64encode(pickle.dumps(value)).decode()


def decode(text: str) -> object:
    return pickle.loads(base64.urlsafe_b64decode(text.encode()))


def job_main(payload: str) -> None:
    """The job's entrypoint on the cluster: the shards on this cluster's workers, one line per shard."""
    from nait_pipeline.lib.execution.executors import ShardExecutor

    job = decode(payload)
    tasks: list[ShardTask] = job["tasks"]
    executor = ShardExecutor("ray", "auto", job["workers"], job["cpus_per_worker"], job["gpus_per_worker"],
                             job["max_retries"])
    with executor.start(job["settings"], len(tasks), log=lambda line: print(line, flush=True)) as workers:
        device = workers.device(job["requested_device"])
        if device != job["device"]:
            raise RuntimeError(f"the cluster's workers run on {device}, the run prepared its shards for "
                               f"{job['device']}: set [ray] gpus_per_worker to match the cluster")
        workers.run(tasks, lambda _task, outcome: print(OUTCOME_PREFIX + json.dumps(asdict(outcome)), flush=True))


class RayJobWorkers:
    """The executor's side of a job: submit, relay the log, verify every shard, stop the job on failure."""

    def __init__(self, settings: Settings, address: str, workers: int, cpus_per_worker: float,
                 gpus_per_worker: float, max_retries: int, log: Callable[[str], None] | None) -> None:
        if gpus_per_worker < 0:
            raise ValueError("a Ray Jobs address needs [ray] gpus_per_worker set (0 or more): the run prepares "
                             "its shards for the device before the job starts")
        self.settings, self.address, self.log = settings, address, log or (lambda line: None)
        self.options = {"workers": workers, "cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker,
                        "max_retries": max_retries}
        self.requested = "auto"

    def device(self, requested: str) -> str:
        self.requested = requested
        if requested != "auto":
            return requested
        return "cuda" if self.options["gpus_per_worker"] > 0 else "cpu"

    def run(self, tasks: Sequence[ShardTask], on_done: Callable[[ShardTask, ShardOutcome], None]) -> list:
        from ray.job_submission import JobSubmissionClient

        from nait_pipeline.lib.execution.executors import ShardFailedError

        client = JobSubmissionClient(self.address)  # a fresh client for every run
        by_shard = {task.shard: task for task in tasks}
        payload = encode({"settings": self.settings, "tasks": list(tasks), "requested_device": self.requested,
                          "device": self.device(self.requested), **self.options})
        job_id = client.submit_job(entrypoint=f"python -m nait_pipeline.lib.execution.ray_jobs {payload}")
        self.log(f"Ray job {job_id} submitted to {self.address} with {len(tasks)} shard(s)")
        outcomes: dict[str, ShardOutcome] = {}
        seen, status = 0, "PENDING"
        try:
            while status not in TERMINAL:
                time.sleep(POLL_SECONDS)
                status = str(client.get_job_status(job_id).value)
                lines = client.get_job_logs(job_id).splitlines()
                for line in lines[seen:]:
                    self._relay(line, by_shard, outcomes, on_done)
                seen = len(lines)
        except BaseException:
            if status not in TERMINAL:
                client.stop_job(job_id)
            raise
        if status != "SUCCEEDED":
            missing = [t.shard for t in tasks if t.shard not in outcomes]
            tail = "\n".join(client.get_job_logs(job_id).splitlines()[-20:])
            raise ShardFailedError(f"Ray job {job_id} ended {status} with shard(s) {missing} unfinished; "
                                   f"the end of its log:\n{tail}")
        for task in tasks:  # a shard whose line never arrived is judged by its files alone
            if task.shard not in outcomes:
                outcome = self._from_files(task)
                on_done(task, outcome)
                outcomes[task.shard] = outcome
        return [outcomes[task.shard] for task in tasks]

    def _relay(self, line: str, by_shard: dict, outcomes: dict, on_done) -> None:
        if not line.startswith(OUTCOME_PREFIX):
            self.log(line)
            return
        try:
            outcome = ShardOutcome(**json.loads(line[len(OUTCOME_PREFIX):]))
        except (ValueError, TypeError):
            self.log(f"unreadable shard report, checked from the files at the end: {line[:200]}")
            return
        task = by_shard.get(outcome.shard)
        if task is not None and outcome.shard not in outcomes:
            on_done(task, outcome)
            outcomes[outcome.shard] = outcome

    def _from_files(self, task: ShardTask) -> ShardOutcome:
        from nait_pipeline.lib.execution.executors import ShardFailedError

        paths = expected_paths(self.settings, task)
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ShardFailedError(f"shard {task.shard}: the Ray job succeeded but {missing[0]} is missing")
        metadata = [read_metadata(p) for p in paths]
        stats = {"checkpoints": [{"checkpoint": m["checkpoint"], "reused": False, **(m.get("stats") or {})}
                                 for m in metadata]} if task.kind == GRADIENTS else {}
        return ShardOutcome(task.shard, [m["store_version"] for m in metadata], [False] * len(paths), stats,
                            "ray job (no report)")


if __name__ == "__main__":
    job_main(sys.argv[1])
