"""Executors for shard tasks: the run's own process (``local``, the default) or a pool of Ray workers.

Both are used the same way::

    with executor.start(settings, n_tasks) as workers:
        device = workers.device("auto")         # where the shards will run: "cpu" or "cuda"
        outcomes = workers.run(tasks, on_done)  # on_done(task, outcome) verifies each shard as it lands

A Ray worker is an actor that loads the model once (``forward.cached_model``) and keeps it across the
shards it is handed; each asks for ``cpus_per_worker`` CPUs and, where the cluster has GPUs, one GPU
(``num_gpus``), falling back to CPU torch where a logical GPU has no device behind it. A worker lost
mid-shard (killed, OOM, node gone) is restarted and its shard retried ``max_retries`` times; past that the
run fails naming the shard and the cause. Nothing a worker writes is visible before the lake's atomic
publication, so a retried or abandoned shard leaves no partial file.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from nait_pipeline.lib.execution.shard_tasks import ShardOutcome, ShardTask, run_task
from nait_pipeline.lib.features.featurize import resolve_device
from nait_pipeline.lib.io.settings import Settings

OnDone = Callable[[ShardTask, ShardOutcome], None]


class ShardFailedError(RuntimeError):
    """A shard could not be featurized (its worker raised, or was lost more often than retries allow)."""


class ExecutorUnavailableError(RuntimeError):
    """The configured executor cannot be used (Ray not installed, or its cluster not reachable)."""


class LocalWorkers:
    """Every shard in this process, one after the other (the model is cached per process)."""

    def __init__(self, settings: Settings, log: Callable[[str], None] | None) -> None:
        self.settings, self.log = settings, log

    def device(self, requested: str) -> str:
        return resolve_device(requested)

    def run(self, tasks: Sequence[ShardTask], on_done: OnDone) -> list[ShardOutcome]:
        outcomes = []
        for task in tasks:
            outcome = run_task(self.settings, task, self.log)
            on_done(task, outcome)
            outcomes.append(outcome)
        return outcomes


class ShardWorker:
    """The Ray actor's body: one per worker process, holding the settings (and, once loaded, the model)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def device(self, requested: str) -> str:
        return resolve_device(requested)

    def pid(self) -> int:
        return os.getpid()

    def run(self, task: ShardTask) -> ShardOutcome:
        return run_task(self.settings, task)


# Forwarded to the workers of a Ray this process starts itself (same machine): the store's credentials and
# settings. A cluster's workers get theirs from their own environment (a Kubernetes secret), never from here.
FORWARDED_ENV_PREFIXES = ("AWS_", "NAIT_", "HF_")
# An address on the Ray Jobs API (the head's dashboard, http://head:8265): the run's shards go as one job.
JOBS_API_SCHEMES = ("http://", "https://")


class RayWorkers:
    def __init__(self, settings: Settings, actors: list, ray_module, max_retries: int) -> None:
        self.settings, self.actors, self.ray, self.max_retries = settings, actors, ray_module, max_retries

    def device(self, requested: str) -> str:
        """The workers' device; they must agree, since a store's dtype follows it."""
        devices = set(self.ray.get([actor.device.remote(requested) for actor in self.actors]))
        if len(devices) > 1:
            raise ExecutorUnavailableError(f"Ray workers resolved different devices {sorted(devices)}: set "
                                           "[ray] gpus_per_worker so that every worker gets a GPU, or none")
        return devices.pop()

    def pids(self) -> list[int]:
        return self.ray.get([actor.pid.remote() for actor in self.actors])

    def run(self, tasks: Sequence[ShardTask], on_done: OnDone) -> list[ShardOutcome]:
        from ray.exceptions import RayActorError, RayTaskError

        queue, pending, outcomes = deque(tasks), {}, {}
        for actor in self.actors:
            if queue:
                task = queue.popleft()
                pending[actor.run.remote(task)] = (actor, task)
        while pending:
            (ref,), _ = self.ray.wait(list(pending), num_returns=1)
            actor, task = pending.pop(ref)
            try:
                outcome = self.ray.get(ref)
            except RayTaskError as exc:
                raise ShardFailedError(f"shard {task.shard}: {type(exc.cause).__name__}: {exc.cause}") from exc
            except RayActorError as exc:
                raise ShardFailedError(f"shard {task.shard}: its Ray worker was lost {self.max_retries + 1} "
                                       f"time(s) (killed, out of memory or its node gone): {exc}") from exc
            on_done(task, outcome)
            outcomes[task.shard] = outcome
            if queue:
                task = queue.popleft()
                pending[actor.run.remote(task)] = (actor, task)
        return [outcomes[task.shard] for task in tasks]


def probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an address nothing listens at: Ray itself retries a missing head for minutes."""
    host, _, port = address.split("://", 1)[-1].split("/", 1)[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise ExecutorUnavailableError(f"Ray at {address} is not reachable ({exc}): start the cluster, or set "
                                       "[ray] address to its head (host:port, ray://host:10001, its Jobs API "
                                       "http://host:8265, or auto)") from exc


class ShardExecutor:
    """What the ``executor`` setting names, with its Ray options."""

    def __init__(self, kind: str = "local", address: str = "", workers: int = 2, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = -1.0, max_retries: int = 2) -> None:
        if kind not in ("local", "ray"):
            raise ValueError(f"executor must be 'local' or 'ray', got {kind!r}")
        if workers < 1:
            raise ValueError(f"[ray] workers must be at least 1, got {workers}")
        self.kind, self.address, self.workers = kind, address, workers
        self.cpus_per_worker, self.gpus_per_worker, self.max_retries = cpus_per_worker, gpus_per_worker, max_retries

    @classmethod
    def from_settings(cls, settings: Settings) -> ShardExecutor:
        return cls(settings.executor, settings.ray_address, settings.ray_workers, settings.ray_cpus_per_worker,
                   settings.ray_gpus_per_worker, settings.ray_max_retries)

    def describe(self) -> str:
        if self.kind == "local":
            return "local (this process)"
        return (f"ray ({self.address or 'this machine'}, {self.workers} worker(s) x {self.cpus_per_worker:g} CPU"
                f"{'' if self.gpus_per_worker == 0 else ', GPU where the cluster has them'})")

    @contextmanager
    def start(self, settings: Settings, n_tasks: int,
              log: Callable[[str], None] | None = None) -> Iterator[LocalWorkers | RayWorkers]:
        if self.kind == "local":
            yield LocalWorkers(settings, log)
            return
        if self.address.startswith(JOBS_API_SCHEMES):
            from nait_pipeline.lib.execution.ray_jobs import RayJobWorkers

            probe(self.address)
            yield RayJobWorkers(settings, self.address, self.workers, self.cpus_per_worker, self.gpus_per_worker,
                                self.max_retries, log)
            return
        ray = self._connect()
        gpus = self._gpus_per_worker(ray)
        options = {"num_cpus": self.cpus_per_worker, "num_gpus": gpus, "max_restarts": self.max_retries,
                   "max_task_retries": self.max_retries}
        if not self.address:
            env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
            options["runtime_env"] = {"env_vars": env}
        count = self._worker_count(ray, gpus, n_tasks)
        actor_class = ray.remote(ShardWorker)
        actors = [actor_class.options(**options).remote(settings) for _ in range(count)]
        if log is not None:
            log(f"{count} Ray worker(s), {self.cpus_per_worker:g} CPU and {gpus:g} GPU each")
        try:
            yield RayWorkers(settings, actors, ray, self.max_retries)
        finally:
            for actor in actors:  # frees their GPUs and memory for the next run
                ray.kill(actor)

    def _connect(self):
        try:
            import ray
        except ImportError as exc:
            raise ExecutorUnavailableError("executor = \"ray\" needs Ray: pip install 'nait_pipeline[ray]'") from exc
        if self.address and self.address != "auto":
            probe(self.address)
        if ray.is_initialized():
            return ray
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=True)
            else:  # a Ray on this machine, started for this process (or joined, when one runs here already)
                ray.init(include_dashboard=False, log_to_driver=True)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            raise ExecutorUnavailableError(f"Ray at {self.address or 'this machine'} is not reachable: {exc}") from exc
        return ray

    def _worker_count(self, ray, gpus: float, n_tasks: int) -> int:
        """``workers``, but no more than the run has shards nor than the cluster can place now (a worker that
        cannot be placed would wait for resources that never come, and the run with it)."""
        total = ray.cluster_resources()
        fits = [self.workers, max(1, n_tasks), int(total.get("CPU", 0) // self.cpus_per_worker) if
                self.cpus_per_worker else self.workers]
        if gpus:
            fits.append(int(total.get("GPU", 0) // gpus))
        count = min(fits)
        if count < 1:
            raise ExecutorUnavailableError(f"the Ray cluster ({total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} "
                                           f"GPU) cannot place one worker of {self.cpus_per_worker:g} CPU and "
                                           f"{gpus:g} GPU: lower [ray] cpus_per_worker / gpus_per_worker")
        return count

    def _gpus_per_worker(self, ray) -> float:
        if self.gpus_per_worker >= 0:
            return self.gpus_per_worker
        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
