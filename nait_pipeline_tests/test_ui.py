"""The Dagster UI in a real browser: `dagster dev` on 127.0.0.1, headless Chromium (Debian's package,
driven by Playwright from PyPI, no browser download) opens the asset graph, materializes the
warehouse by clicking and waits for the run; the result is checked through SQL. A GraphQL client
launches a partitioned run (a dropped capability's target sets). Screenshots go to
$NAIT_SCREENSHOTS (the README's come from `NAIT_SCREENSHOTS=docs/screenshots`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from nait_pipeline.lib.io.settings import PROJECT_ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.ui


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def dagster_dev(model_dir, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        raise RuntimeError("Debian's chromium is needed for the UI test: apt-get install chromium (.ci/run does)")
    work = tmp_path_factory.mktemp("ui")
    data, store, home = work / "data", work / "store", work / "dagster_home"
    (data / "pools").mkdir(parents=True)
    (data / "targets").mkdir()
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    (data / "pools" / "tiny.jsonl").write_text("".join(
        json.dumps({"instruction": f"Name a colour number {i}.", "output": f"Colour {i} is blue."}) + "\n"
        for i in range(20)))
    (data / "targets" / "legal.jsonl").write_text("".join(
        json.dumps({"prompt": f"Clause {i}?", "answer": f"Clause {i} allows it."}) + "\n" for i in range(4)))
    env = {**os.environ, "DAGSTER_HOME": str(home), "NAIT_SETTINGS": os.devnull, "NAIT_DATA_DIR": str(data),
           "NAIT_STORE_DIR": str(store), "NAIT_MODEL": str(model_dir), "NAIT_POOL_SAMPLE": ""}
    # The model record and the pool, so the runs launched from the UI take seconds.
    prepared = subprocess.run([str(Path(sys.executable).parent / "nait-pipeline"), "materialize", "--stage",
                               "foundation"], env=env, capture_output=True, text=True, timeout=600)
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    port = free_port()
    log = open(work / "dagster_dev.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",
                               "-h", "127.0.0.1", "-p", str(port)], cwd=PROJECT_ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _up(f"http://127.0.0.1:{port}/server_info"), 180, "dagster dev to answer")
        yield {"port": port, "env": env, "home": home, "store": store, "log": work / "dagster_dev.log"}
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
        log.close()


def skip_signup(page) -> None:
    """Dismiss the "Join the Dagster community" dialog a fresh browser is shown."""
    page.wait_for_timeout(1500)
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home))


def _latest_run_status(home: Path, asset: str):
    with _instance(home) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        runs = instance.get_runs(limit=1)
        return event, runs[0].status if runs else None


def test_materialize_by_clicking_in_the_asset_graph(dagster_dev):
    from playwright.sync_api import sync_playwright

    port, home, store = dagster_dev["port"], dagster_dev["home"], dagster_dev["store"]
    shots = Path(os.environ.get("NAIT_SCREENSHOTS") or dagster_dev["log"].parent / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/locations/nait_pipeline/asset-groups/subsets", wait_until="networkidle",
                  timeout=120_000)
        skip_signup(page)
        page.get_by_text("subset_diffs").first.wait_for(timeout=120_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(shots / "asset_graph_subsets.png"))
        page.goto(f"http://127.0.0.1:{port}/assets/warehouse", wait_until="networkidle", timeout=120_000)
        skip_signup(page)
        page.locator("button", has_text="Materialize").first.click(timeout=60_000)
        page.wait_for_timeout(1500)
        confirm = page.get_by_role("button", name="Confirm")  # shown when an upstream asset is missing
        if confirm.count():
            confirm.first.click()
        wait_for(lambda: _latest_run_status(home, "warehouse")[0] is not None, 300, "the warehouse run to succeed",
                 interval=2.0)
        page.goto(f"http://127.0.0.1:{port}/assets/warehouse", wait_until="networkidle", timeout=120_000)
        skip_signup(page)
        wait_for(lambda: page.get_by_text("Never materialized").count() == 0, 60, "the page to show the run")
        page.wait_for_timeout(2000)
        page.screenshot(path=str(shots / "warehouse_materialized.png"))
        browser.close()
    import duckdb

    with duckdb.connect(str(store / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM pool_examples").fetchone()[0] == 20
        assert con.execute("SELECT count(*) FROM current_subsets").fetchone()[0] == 0


def test_graphql_launches_a_partitioned_run(dagster_dev):
    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_dev["port"])
    with _instance(dagster_dev["home"]) as instance:
        assert "legal" in instance.get_dynamic_partitions("capabilities")
    try:
        run_id = client.submit_job_execution("__ASSET_JOB", tags={"dagster/partition": "legal"},
                                             asset_selection=[dg.AssetKey("target_sets")])
    except DagsterGraphQLClientError as exc:  # shown with the server's log tail
        raise AssertionError(f"{exc}\n{dagster_dev['log'].read_text()[-3000:]}") from exc
    status = wait_for(lambda: (s := client.get_run_status(run_id)) in (
        dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED) and s, 300,
        "the GraphQL run to finish", interval=2.0)
    assert status == dg.DagsterRunStatus.SUCCESS
    import pyarrow.parquet as pq

    assert pq.read_table(dagster_dev["store"] / "lake" / "targets" / "selection" / "legal.parquet").num_rows == 4
