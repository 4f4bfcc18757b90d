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


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API on 127.0.0.1 (moto in server mode, any free port) with dummy credentials."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield f"http://{host}:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_store(s3_endpoint, request) -> str:
    """``s3://<fresh bucket>/store``: a bucket per test."""
    import uuid

    from nait_pipeline.lib.io.storage import s3_filesystem

    bucket = f"test-{uuid.uuid4().hex[:20]}"
    s3_filesystem(s3_endpoint).mkdir(bucket)
    return f"s3://{bucket}/store"


@pytest.fixture(params=["file", "s3"])
def lake_store(request, tmp_path):
    """A store on each backend: (store_dir, endpoint_url or None, local_dir)."""
    if request.param == "file":
        return str(tmp_path / "store"), None, tmp_path / "store"
    endpoint = request.getfixturevalue("s3_endpoint")
    return request.getfixturevalue("s3_store"), endpoint, tmp_path / "local"


@pytest.fixture(scope="session")
def local_ray():
    """A Ray on this machine for the session: 2 CPUs and one logical GPU (Ray schedules it without hardware;
    the workers fall back to CPU torch), no dashboard, a small object store."""
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
             log_to_driver=False)
    yield ray
    ray.shutdown()
