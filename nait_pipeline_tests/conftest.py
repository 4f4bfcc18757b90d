"""Shared fixtures: the public data beside the repo, the real embedded model, temporary stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nait_pipeline.lib.io.settings import PROJECT_ROOT

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests never read a developer's nait_settings.toml: an empty settings file, defaults and env vars only.
os.environ["NAIT_SETTINGS"] = os.devnull


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public pools and targets (`../shared/data`, or NAIT_DATA_DIR)."""
    path = Path(os.environ.get("NAIT_DATA_DIR") or PROJECT_ROOT.parent / "shared" / "data")
    if not (path / "pools").is_dir() or not (path / "targets").is_dir():
        raise RuntimeError(f"test data not found at {path}: put ../shared beside the repo or set NAIT_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The embedded SmolLM2-135M-Instruct, converted once per test session from the real GGUF."""
    from nait_pipeline.lib.models.model_io import convert_gguf, embedded_gguf_path

    return convert_gguf(embedded_gguf_path(), tmp_path_factory.mktemp("models") / "SmolLM2-135M-Instruct")


@pytest.fixture
def store_dir(tmp_path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path
