"""The set-up run on a lake in S3, or featurized by Ray workers, against the same run on a local folder in
one process: same subsets?

Starts a real S3 API on 127.0.0.1 (moto in server mode, dummy credentials, a fresh bucket), then runs
``nait-pipeline materialize`` on the embedded model once per store with the same settings: ``file`` (a
local folder, the local executor), ``s3`` (``store_dir = s3://<bucket>/store``) and ``ray`` (a local folder
with ``executor = "ray"``: pool shards featurized by two workers of a Ray started on this machine), and
compares every method's current subsets (versions and ranked ids) with the ``file`` run's. Prints a table
and writes ``bench/results/object_store_parity.json`` (``ray_parity.json`` for ``--stores file ray``).

    .venv/bin/python bench/object_store_parity.py [--sample 30] [--stores file s3 ray] [--methods nait ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = ["nait", "nait_c", "rds_round_robin", "perplexity_top", "random", "length"]


def run_setup(store: str, local: Path, env: dict, sample: int, methods: list[str], log: Path,
              executor: str = "local") -> float:
    settings = local / "nait_settings.toml"
    settings.write_text(f'data_dir = "{env["NAIT_DATA_DIR"]}"\nstore_dir = "{store}"\npool_sample = {sample}\n'
                        f'executor = "{executor}"\n'
                        f'[object_store]\nlocal_dir = "{local}"\n' + (f'endpoint_url = "{env["ENDPOINT"]}"\n'
                                                                     if store.startswith("s3://") else ""))
    run_env = {**env, "NAIT_SETTINGS": str(settings), "DAGSTER_HOME": str(local / "dagster_home")}
    (local / "dagster_home").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "nait_pipeline.cli", "materialize", "--methods", *methods],
                              cwd=ROOT, env=run_env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise SystemExit(f"materialize on {store} failed (exit {done.returncode}); the end of its log:\n{tail}")
    return time.perf_counter() - started


def subsets(store: str, local: Path, endpoint: str | None, methods: list[str]) -> dict:
    from nait_pipeline.lib.io.lake import read_table
    from nait_pipeline.lib.io.settings import Settings

    settings = Settings(data_dir=local, store_dir=store if store.startswith("s3://") else Path(store), model=None,
                        pool_sample=None, endpoint_url=endpoint, local_dir=local)
    layout = settings.layout
    out = {}
    for method in methods:
        for row in read_table(layout.current_subsets(method)).to_pylist():
            version = row["subset_version"]
            out[version] = read_table(layout.subset(version)).sort_by("rank").column("example_id").to_pylist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=30, help="pool_sample of both runs")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--stores", nargs="+", default=["file", "s3"], choices=["file", "s3", "ray"],
                        help="run only these (one alone: to see that it completes; each is compared with file)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from moto.server import ThreadedMotoServer

    from nait_pipeline.lib.io.storage import s3_filesystem

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    bucket = f"parity-{uuid.uuid4().hex[:12]}"
    s3_filesystem(endpoint).mkdir(bucket)
    data_dir = os.environ.get("NAIT_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    env = {**os.environ, "NAIT_DATA_DIR": data_dir, "ENDPOINT": endpoint}
    env.pop("NAIT_STORE_DIR", None)
    env.pop("NAIT_POOL_SAMPLE", None)
    try:
        with tempfile.TemporaryDirectory(prefix="nait-parity-") as scratch:
            scratch = Path(scratch)
            for name in args.stores:
                (scratch / name).mkdir()
            stores = {"file": str(scratch / "file" / "store"), "s3": f"s3://{bucket}/store",
                      "ray": str(scratch / "ray" / "store")}
            stores = {name: stores[name] for name in args.stores}
            seconds, found = {}, {}
            for name, store in stores.items():
                seconds[name] = run_setup(store, scratch / name, env, args.sample, args.methods,
                                          scratch / f"{name}.log", "ray" if name == "ray" else "local")
                print(f"{name}: materialize in {seconds[name]:.0f} s", flush=True)
                found[name] = subsets(store, scratch / name, endpoint if name == "s3" else None, args.methods)
            objects = len(s3_filesystem(endpoint).find(f"{bucket}/store/lake/_objects")) if "s3" in stores else 0
    finally:
        server.stop()
    if "file" not in found or len(found) < 2:
        return
    local = found["file"]
    label = {"file": "local folder", "s3": "s3 (moto on 127.0.0.1)", "ray": "local folder, executor = ray"}
    print("| store | materialize | subsets | identical to the local folder's |\n|---|---|---|---|")
    for name in found:
        print(f"| {label[name]} | {seconds[name]:.0f} s | {len(found[name])} | {found[name] == local} |")
    differing = {name: sorted(set(local) ^ set(other)) + sorted(v for v in local if other.get(v) != local[v])
                 for name, other in found.items() if name != "file"}
    print(f"objects in the bucket: {objects}" if objects else "")
    result = {"sample": args.sample, "methods": args.methods, "seconds": seconds, "subsets": len(local),
              "identical": {name: not diff for name, diff in differing.items()}, "objects": objects,
              "differing": differing}
    out = ROOT / "bench" / "results" / ("ray_parity.json" if list(found) == ["file", "ray"]
                                        else "object_store_parity.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if any(differing.values()):
        raise SystemExit(f"subsets differ: { {k: v[:5] for k, v in differing.items() if v} }")


if __name__ == "__main__":
    main()
