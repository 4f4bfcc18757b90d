"""One pool shard's featurization as a self-contained task, and the driver's check of what it wrote.

A task names a feature kind, a shard and plain parameters; :func:`run_task` needs nothing but the settings,
so the run's own process and a Ray worker on another machine execute the same code. A worker reads its
shard's rows from the lake, computes (or finds up to date) the shard's store files and writes each under
the lake's atomic publication. Its report is never trusted alone: :func:`verify_outcome`, in the driver,
re-reads every file and checks its identity, input version and row ids against what the driver itself
derives from the pool before a data version is recorded.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from nait_pipeline.lib.features import forward
from nait_pipeline.lib.features.featurize import FeaturizerSpec
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import read_metadata, read_table
from nait_pipeline.lib.io.progress import Progress, to_console
from nait_pipeline.lib.io.settings import Settings
from nait_pipeline.lib.models.model_io import ModelInfo

FORWARD = "forward"
GRADIENTS = "gradients"


class ShardVerificationError(RuntimeError):
    """A shard's files do not hold what its task was asked to compute (missing, other rows, other identity)."""


@dataclass(frozen=True)
class ShardTask:
    kind: str  # FORWARD or GRADIENTS
    shard: str
    # FORWARD: {"spec": FeaturizerSpec, "device": str}; GRADIENTS: featurize_checkpoints' keyword arguments
    params: dict


@dataclass
class ShardOutcome:
    """What a worker reports: each file's store version and whether it was kept (already up to date)."""

    shard: str
    versions: list[str]
    reused: list[bool]
    stats: dict = field(default_factory=dict)
    worker: str = ""  # pid@host that ran it


def worker_name() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def printing_progress(label: str, log: Callable[[str], None] | None):
    """A featurizer's progress: every update on the console, each tenth (and the end) to ``log``."""
    meter, last_decile = Progress(label, 0), [-1]

    def report(done: int, total: int, tokens: int | None = None) -> None:
        meter.total = total
        line = meter.update(done, tokens) if tokens is not None else meter.update(done)
        to_console(line, final=done == total)
        decile = 10 * done // max(1, total)
        if log is not None and (decile != last_decile[0] or done == total):
            last_decile[0] = decile
            log(line)
    return report


def run_task(settings: Settings, task: ShardTask, log: Callable[[str], None] | None = None) -> ShardOutcome:
    """Featurize one shard into the lake ``settings`` points at (the files of an identical store are kept)."""
    layout = settings.layout
    rows, ids, input_version = forward.shard_rows(layout, task.shard)
    if task.kind == FORWARD:
        spec: FeaturizerSpec = task.params["spec"]
        model = ModelInfo.read(layout)
        run = forward.featurize_into(layout.pool_activations(task.shard), model, rows, ids, spec, input_version,
                                     lambda: forward.cached_model(model.path, spec.dtype, task.params["device"]),
                                     printing_progress(f"featurizing {task.shard}", log))
        return ShardOutcome(task.shard, [run.version], [run.reused], run.stats, worker_name())
    if task.kind == GRADIENTS:
        from nait_pipeline.lib.features.gradient_store import featurize_checkpoints

        done = featurize_checkpoints(layout, rows, ids, input_version, "adam",
                                     lambda epoch: layout.pool_gradients(task.shard, epoch), **task.params,
                                     progress=lambda label: printing_progress(label, log))
        versions = [read_metadata(layout.pool_gradients(task.shard, d["checkpoint"]))["store_version"] for d in done]
        return ShardOutcome(task.shard, versions, [d["reused"] for d in done], {"checkpoints": done}, worker_name())
    raise ValueError(f"unknown shard task kind {task.kind!r}; known: {FORWARD}, {GRADIENTS}")


def expected_paths(settings: Settings, task: ShardTask) -> list:
    layout = settings.layout
    if task.kind == FORWARD:
        return [layout.pool_activations(task.shard)]
    from nait_pipeline.lib.features.gradient_store import read_warmup

    return [layout.pool_gradients(task.shard, c["epoch"]) for c in read_warmup(layout)["checkpoints"]]


def verify_outcome(settings: Settings, task: ShardTask, outcome: ShardOutcome) -> None:
    """Re-read the files a worker reported and check them against the pool as the driver sees it."""
    layout = settings.layout
    _, ids, input_version = forward.shard_rows(layout, task.shard, texts=False)
    paths = expected_paths(settings, task)
    if outcome.shard != task.shard or len(outcome.versions) != len(paths):
        raise ShardVerificationError(f"shard {task.shard}: the worker reported {len(outcome.versions)} file(s) of "
                                     f"shard {outcome.shard!r}, expected {len(paths)}")
    expected_version = None
    if task.kind == FORWARD:
        identity = forward.store_identity(ModelInfo.read(layout), task.params["spec"], input_version)
        expected_version = sha256_json(identity)[:16]
    for path, reported in zip(paths, outcome.versions):
        if not path.exists():
            raise ShardVerificationError(f"shard {task.shard}: {path} is missing although worker "
                                         f"{outcome.worker} reported it written")
        metadata = read_metadata(path)
        found = metadata.get("store_version")
        if found != reported or (expected_version is not None and found != expected_version):
            raise ShardVerificationError(f"shard {task.shard}: {path} holds store version {found}, the worker "
                                         f"reported {reported}, the task's identity gives {expected_version or reported}")
        if metadata.get("input_version") != input_version:
            raise ShardVerificationError(f"shard {task.shard}: {path} was computed from input version "
                                         f"{metadata.get('input_version')}, the pool's shard is {input_version}")
        stored_ids = read_table(path, columns=["example_id"]).column("example_id").to_pylist()
        if stored_ids != ids:
            raise ShardVerificationError(f"shard {task.shard}: {path} holds {len(stored_ids)} rows whose ids differ "
                                         f"from the shard's {len(ids)}")
