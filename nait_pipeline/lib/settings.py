"""Configuration read from the environment, with defaults that work from a fresh clone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CAPABILITIES = ("math", "code", "reasoning", "knowledge", "multilingual")


def _optional_positive_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
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

    @classmethod
    def from_env(cls) -> "Settings":
        data_dir = Path(os.environ.get("NAIT_DATA_DIR") or PROJECT_ROOT / "data").expanduser().resolve()
        store_dir = Path(os.environ.get("NAIT_STORE_DIR") or PROJECT_ROOT / "data" / "store").expanduser().resolve()
        return cls(
            data_dir=data_dir,
            store_dir=store_dir,
            model=os.environ.get("NAIT_MODEL") or None,
            pool_sample=_optional_positive_int("NAIT_POOL_SAMPLE"),
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
