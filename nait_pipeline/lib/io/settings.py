"""Configuration: one project settings file, overridable by environment variables.

``nait_settings.toml`` at the project root (or the file ``NAIT_SETTINGS`` names) is read by the CLI,
``dagster dev``, the sensors and CI alike, so every shell sees the same data folder, store, model and
pool sample; ``scripts/setup.sh`` writes it. An environment variable (``NAIT_DATA_DIR``,
``NAIT_STORE_DIR``, ``NAIT_MODEL``, ``NAIT_POOL_SAMPLE``, ``NAIT_LOCAL_DIR``, ``NAIT_S3_ENDPOINT``,
``NAIT_EXECUTOR``, ``NAIT_RAY_ADDRESS``, ``NAIT_RAY_WORKERS``)
overrides the file's value for one command. Relative paths in the file are relative to the project root.

``store_dir`` may be an object store, ``s3://bucket/prefix``: the lake then lives there (see
``lib/io/storage.py``), while the DuckDB warehouse, fine-tuned models and training checkpoints stay in
``[object_store] local_dir`` on this machine. Credentials come from the AWS environment (variables, a
profile or an instance role), never from this file.
"""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from nait_pipeline.lib.io import storage
from nait_pipeline.lib.io.storage import is_object_store_uri

PROJECT_ROOT = Path(__file__).resolve().parents[3]
SETTINGS_FILE = "nait_settings.toml"
KNOWN_KEYS = {"data_dir", "store_dir", "model", "pool_sample", "automation", "forward_store", "licenses",
              "object_store", "executor", "ray", "kubernetes"}
AUTOMATION_KEYS = {"featurize_new_shards", "max_shards_per_tick", "sensor_interval_s"}
FORWARD_STORE_KEYS = {"layers", "dim", "seed", "float_width", "bits"}
OBJECT_STORE_KEYS = {"endpoint_url", "local_dir"}
RAY_KEYS = {"address", "workers", "cpus_per_worker", "gpus_per_worker", "max_retries"}
KUBERNETES_KEYS = {"run_gpus", "cpu_per_gpu", "memory_gib_per_gpu"}
EXECUTORS = ("local", "ray")


def settings_path() -> Path:
    return Path(os.environ.get("NAIT_SETTINGS") or PROJECT_ROOT / SETTINGS_FILE).expanduser()


def read_settings_file(path: Path | None = None) -> dict:
    """The settings file's values (empty when there is none), checked for unknown keys."""
    path = path or settings_path()
    if not path.exists():
        return {}
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from exc
    unknown = sorted(set(values) - KNOWN_KEYS) + sorted(set(values.get("automation", {})) - AUTOMATION_KEYS) + \
        sorted(set(values.get("forward_store", {})) - FORWARD_STORE_KEYS) + \
        sorted(set(values.get("object_store", {})) - OBJECT_STORE_KEYS) + \
        sorted(set(values.get("ray", {})) - RAY_KEYS) + sorted(set(values.get("kubernetes", {})) - KUBERNETES_KEYS)
    if unknown:
        known = KNOWN_KEYS | AUTOMATION_KEYS | FORWARD_STORE_KEYS | OBJECT_STORE_KEYS | RAY_KEYS | KUBERNETES_KEYS
        raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return values
CAPABILITIES = ("math", "code", "reasoning", "knowledge", "multilingual")


def _optional_positive_int(name: str, fallback: object = None) -> int | None:
    raw = os.environ[name].strip() if name in os.environ else str(fallback or "")
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from exc
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Where inputs are read from and outputs written to.

    data_dir:    input folder with ``pools/`` and ``targets/`` (layout of ../shared/data).
    store_dir:   output folder: the Parquet lake (``lake/``), ``warehouse.duckdb`` and ``models/``; or an
                 object store URI ``s3://bucket/prefix`` holding the lake (the rest goes to ``local_dir``).
    model:       a local Hugging Face model directory; ``None`` means the embedded SmolLM2-135M.
    pool_sample: seeded per-pool row limit; ``None`` means the whole pool.
    """

    data_dir: Path
    store_dir: Path | str
    model: str | None
    pool_sample: int | None
    featurize_new_shards: bool = False  # the unfeaturized_pool_shards sensor starts running
    max_shards_per_tick: int = 4  # ... and requests at most this many shards per evaluation
    sensor_interval_s: int = 30  # how often the data sensors look at the folders (a pool file settles for one)
    # What the forward store keeps per row (lib/features/reduction.py): "auto" and -1 pick by model width.
    store_layers: str = "auto"
    store_dim: int = -1
    store_seed: int = 0
    store_float_width: str = "auto"
    store_bits: int = -1
    # Pool name -> license id for published subsets' cards (`nait-pipeline publish`), beside the shared pools'.
    licenses: dict = field(default_factory=dict)
    # An object store's endpoint (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL or AWS itself) and the local
    # folder for what cannot live in one (the DuckDB file, models, checkpoints); unused for a local store.
    endpoint_url: str | None = None
    local_dir: Path | None = None
    # Where pool shards are featurized (lib/execution): in the run's own process, or on Ray workers. An empty
    # ray_address starts (or joins) a Ray on this machine; "auto" or "ray://host:10001" joins a cluster.
    executor: str = "local"
    ray_address: str = ""
    ray_workers: int = 2
    ray_cpus_per_worker: float = 1.0
    ray_gpus_per_worker: float = -1.0  # -1: one GPU per worker where the cluster has GPUs, else none
    ray_max_retries: int = 2  # a worker lost mid-shard is restarted and its shard retried this many times
    # A featurization run's pod on Kubernetes (lib/execution/k8s.py): its GPUs (a Ray inside it, one worker per
    # GPU), CPU and memory per GPU. A step pod's shape is in the featurization assets' op tags (one GPU).
    k8s_run_gpus: int = 1
    k8s_cpu_per_gpu: int = 8
    k8s_memory_gib_per_gpu: int = 64

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.sensor_interval_s < 1:
            raise ValueError(f"[automation] sensor_interval_s must be >= 1 second, got {self.sensor_interval_s}")

    @classmethod
    def from_env(cls) -> "Settings":
        """Defaults, then the settings file, then environment variables (``NAIT_POOL_SAMPLE=`` set to
        empty means the whole pool even if the file sets a sample)."""
        file = read_settings_file()

        def path(env: str, key: str, default: Path) -> Path:
            raw = os.environ.get(env) or file.get(key)
            value = Path(raw).expanduser() if raw else default
            return (value if value.is_absolute() else PROJECT_ROOT / value).resolve()

        automation = file.get("automation", {})
        forward_store = file.get("forward_store", {})
        object_store = file.get("object_store", {})
        ray = file.get("ray", {})
        kubernetes = file.get("kubernetes", {})
        store = os.environ.get("NAIT_STORE_DIR") or file.get("store_dir")
        local = os.environ.get("NAIT_LOCAL_DIR") or object_store.get("local_dir")
        return cls(
            data_dir=path("NAIT_DATA_DIR", "data_dir", PROJECT_ROOT / "data"),
            store_dir=store if store and is_object_store_uri(store) else
            path("NAIT_STORE_DIR", "store_dir", PROJECT_ROOT / "data" / "store"),
            model=os.environ.get("NAIT_MODEL") or file.get("model") or None,
            pool_sample=_optional_positive_int("NAIT_POOL_SAMPLE", file.get("pool_sample")),
            featurize_new_shards=bool(automation.get("featurize_new_shards", False)),
            max_shards_per_tick=int(automation.get("max_shards_per_tick", 4)),
            sensor_interval_s=int(automation.get("sensor_interval_s", 30)),
            store_layers=str(forward_store.get("layers", "auto")),
            store_dim=int(forward_store.get("dim", -1)),
            store_seed=int(forward_store.get("seed", 0)),
            store_float_width=str(forward_store.get("float_width", "auto")),
            store_bits=int(forward_store.get("bits", -1)),
            licenses={str(k): str(v) for k, v in file.get("licenses", {}).items()},
            endpoint_url=os.environ.get("NAIT_S3_ENDPOINT") or object_store.get("endpoint_url") or None,
            local_dir=_resolved(Path(local).expanduser()) if local else None,
            executor=os.environ.get("NAIT_EXECUTOR") or str(file.get("executor", "local")),
            ray_address=os.environ.get("NAIT_RAY_ADDRESS") or str(ray.get("address", "")),
            ray_workers=int(os.environ.get("NAIT_RAY_WORKERS") or ray.get("workers", 2)),
            ray_cpus_per_worker=float(ray.get("cpus_per_worker", 1.0)),
            ray_gpus_per_worker=float(ray.get("gpus_per_worker", -1.0)),
            ray_max_retries=int(ray.get("max_retries", 2)),
            k8s_run_gpus=int(kubernetes.get("run_gpus", 1)),
            k8s_cpu_per_gpu=int(kubernetes.get("cpu_per_gpu", 8)),
            k8s_memory_gib_per_gpu=int(kubernetes.get("memory_gib_per_gpu", 64)),
        )

    @property
    def on_object_store(self) -> bool:
        return is_object_store_uri(self.store_dir)

    @property
    def work_dir(self) -> Path:
        """This machine's folder: the store itself, or ``local_dir`` when the lake is on an object store."""
        if not self.on_object_store:
            return Path(self.store_dir)
        return self.local_dir or PROJECT_ROOT / "data" / "store_local"

    @property
    def lake_dir(self):
        """The lake: a local folder, or a ``UPath`` on the object store (checked when first asked for)."""
        return lake_root(str(self.store_dir), self.endpoint_url)

    @property
    def layout(self):
        from nait_pipeline.lib.io.layout import LakeLayout

        return LakeLayout(self.lake_dir, self.work_dir / "lake" if self.on_object_store else None)

    @property
    def warehouse_path(self) -> Path:
        return self.work_dir / "warehouse.duckdb"

    @property
    def models_dir(self) -> Path:
        return self.work_dir / "models"


def _resolved(path: Path) -> Path:
    return (path if path.is_absolute() else PROJECT_ROOT / path).resolve()


@functools.lru_cache(maxsize=8)
def lake_root(store: str, endpoint_url: str | None):
    """Cached: an object store's bucket and conditional puts are checked once per process."""
    return storage.lake_root(store, endpoint_url)
