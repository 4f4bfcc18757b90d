"""Configuration: one project settings file, overridable by environment variables.

``nait_settings.toml`` at the project root (or the file ``NAIT_SETTINGS`` names) is read by the CLI,
``dagster dev``, the sensors and CI alike, so every shell sees the same data folder, store, model and
pool sample; ``scripts/setup.sh`` writes it. An environment variable (``NAIT_DATA_DIR``,
``NAIT_STORE_DIR``, ``NAIT_MODEL``, ``NAIT_POOL_SAMPLE``) overrides the file's value for one command.
Relative paths in the file are relative to the project root.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
SETTINGS_FILE = "nait_settings.toml"
KNOWN_KEYS = {"data_dir", "store_dir", "model", "pool_sample", "automation", "forward_store", "licenses"}
AUTOMATION_KEYS = {"featurize_new_shards", "max_shards_per_tick"}
FORWARD_STORE_KEYS = {"layers", "dim", "seed", "float_width"}


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
        sorted(set(values.get("forward_store", {})) - FORWARD_STORE_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; known: "
                         f"{sorted(KNOWN_KEYS | AUTOMATION_KEYS | FORWARD_STORE_KEYS)}")
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
    store_dir:   output folder: the Parquet lake (``lake/``), ``warehouse.duckdb`` and ``models/``.
    model:       a local Hugging Face model directory; ``None`` means the embedded SmolLM2-135M.
    pool_sample: seeded per-pool row limit; ``None`` means the whole pool.
    """

    data_dir: Path
    store_dir: Path
    model: str | None
    pool_sample: int | None
    featurize_new_shards: bool = False  # the unfeaturized_pool_shards sensor starts running
    max_shards_per_tick: int = 4  # ... and requests at most this many shards per evaluation
    # What the forward store keeps per row (lib/features/reduction.py): "auto" and -1 pick by model width.
    store_layers: str = "auto"
    store_dim: int = -1
    store_seed: int = 0
    store_float_width: str = "auto"
    # Pool name -> license id for published subsets' cards (`nait-pipeline publish`), beside the shared pools'.
    licenses: dict = field(default_factory=dict)

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
        return cls(
            data_dir=path("NAIT_DATA_DIR", "data_dir", PROJECT_ROOT / "data"),
            store_dir=path("NAIT_STORE_DIR", "store_dir", PROJECT_ROOT / "data" / "store"),
            model=os.environ.get("NAIT_MODEL") or file.get("model") or None,
            pool_sample=_optional_positive_int("NAIT_POOL_SAMPLE", file.get("pool_sample")),
            featurize_new_shards=bool(automation.get("featurize_new_shards", False)),
            max_shards_per_tick=int(automation.get("max_shards_per_tick", 4)),
            store_layers=str(forward_store.get("layers", "auto")),
            store_dim=int(forward_store.get("dim", -1)),
            store_seed=int(forward_store.get("seed", 0)),
            store_float_width=str(forward_store.get("float_width", "auto")),
            licenses={str(k): str(v) for k, v in file.get("licenses", {}).items()},
        )

    @property
    def lake_dir(self) -> Path:
        return self.store_dir / "lake"

    @property
    def warehouse_path(self) -> Path:
        return self.store_dir / "warehouse.duckdb"

    @property
    def models_dir(self) -> Path:
        return self.store_dir / "models"
