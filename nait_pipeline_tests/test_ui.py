"""The Dagster UI in a real browser: `dagster dev` on 127.0.0.1, headless Chromium (Debian's package,
driven by Playwright from PyPI, no browser download), on a store set up by the CLI with the
featurization sensor switched on in the settings file. In file order, docs/walkthrough.md:
nothing starts by itself; the warehouse is materialized by clicking and checked through SQL; a GraphQL
client launches a partitioned run; a pool file is dropped, the sensors ingest it and featurize only its
shard, the subsets are re-selected by clicking and the diff shows the new rows. Screenshots go to
$NAIT_SCREENSHOTS (the walkthrough's come from `NAIT_SCREENSHOTS=docs/screenshots`)."""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
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
    # The featurization sensor is on, as a user who wants new rows featurized sets it; the sensors look every
    # 5 s (a user's setting too), so the walkthrough does not wait out 30 s intervals.
    (work / "nait_settings.toml").write_text("[automation]\nfeaturize_new_shards = true\nsensor_interval_s = 5\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "NAIT_SETTINGS": str(work / "nait_settings.toml"),
           "NAIT_DATA_DIR": str(data), "NAIT_STORE_DIR": str(store), "NAIT_MODEL": str(model_dir),
           "NAIT_POOL_SAMPLE": ""}
    # The set-up: pool, targets, features and the length subsets, so UI runs take seconds.
    prepared = subprocess.run([str(Path(sys.executable).parent / "nait-pipeline"), "materialize", "--methods",
                               "length"], env=env, capture_output=True, text=True, timeout=900)
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    with _instance(home) as instance:
        runs_after_setup = len(instance.get_runs())
    port = free_port()
    log = open(work / "dagster_dev.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",
                               "-h", "127.0.0.1", "-p", str(port)], cwd=PROJECT_ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _up(f"http://127.0.0.1:{port}/server_info"), 180, "dagster dev to answer")
        yield {"port": port, "env": env, "home": home, "store": store, "data": data, "log": work / "dagster_dev.log",
               "runs_after_setup": runs_after_setup}
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # idle, dagster dev exits in ~2 s
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:  # a sensor's run still winding down kept it alive: do not leave it behind
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


def skip_signup(page) -> None:
    """Dismiss the "Join the Dagster community" dialog a fresh browser is shown."""
    page.wait_for_timeout(1500)
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home))


def _materializations(home: Path, asset: str, partition: str | None = None) -> int:
    with _instance(home) as instance:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
            limit=1000).records
        return len(records)


def _failed_runs(home: Path) -> list[str]:
    with _instance(home) as instance:
        return [run.run_id for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))]


def wait_for_materialization(dagster_dev, asset: str, before: int, what: str, partition: str | None = None,
                             timeout: float = 300) -> None:
    home = dagster_dev["home"]

    def done() -> bool:
        if failed := _failed_runs(home):
            raise AssertionError(f"run(s) {failed} failed while waiting for {what}\n"
                                 f"{dagster_dev['log'].read_text()[-3000:]}")
        return _materializations(home, asset, partition) > before

    wait_for(done, timeout, what, interval=2.0)


def open_page(page, url: str) -> None:
    page.goto(url, wait_until="networkidle", timeout=120_000)
    skip_signup(page)


def materialize_by_clicking(page, dagster_dev, asset: str) -> None:
    """Open the asset's page, click Materialize (and Confirm where the UI asks), wait for the run."""
    before = _materializations(dagster_dev["home"], asset)
    open_page(page, f"http://127.0.0.1:{dagster_dev['port']}/assets/{asset}")
    page.locator("button", has_text="Materialize").first.click(timeout=60_000)
    page.wait_for_timeout(1500)
    confirm = page.get_by_role("button", name="Confirm")  # shown when an upstream asset is stale or missing
    if confirm.count():
        confirm.first.click()
    wait_for_materialization(dagster_dev, asset, before, f"the {asset} run launched by clicking")


@pytest.fixture(scope="module")
def browser_page(dagster_dev):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser.new_page(viewport={"width": 1500, "height": 900})
        browser.close()


@pytest.fixture(scope="module")
def shots(dagster_dev) -> Path:
    path = Path(os.environ.get("NAIT_SCREENSHOTS") or dagster_dev["log"].parent / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_nothing_starts_by_itself(dagster_dev, browser_page, shots):
    """Opening the UI on a set-up store starts no run: every running sensor has evaluated (its first
    tick is in the daemon's log) and skipped."""
    log = dagster_dev["log"]
    for sensor in ("new_pool_files", "new_target_files", "unfeaturized_pool_shards"):
        wait_for(lambda: f"Checking for new runs for sensor: {sensor}" in log.read_text(), 180,
                 f"the first tick of {sensor}")
    time.sleep(5)  # a run requested by those ticks would be queued by now
    with _instance(dagster_dev["home"]) as instance:
        assert len(instance.get_runs()) == dagster_dev["runs_after_setup"], "a run started by itself"
    open_page(browser_page, f"http://127.0.0.1:{dagster_dev['port']}/automation")
    browser_page.get_by_text("unfeaturized_pool_shards").first.wait_for(timeout=60_000)
    browser_page.wait_for_timeout(2000)
    browser_page.screenshot(path=str(shots / "automation_nothing_started.png"))


def test_materialize_by_clicking_in_the_asset_graph(dagster_dev, browser_page, shots):
    page, port = browser_page, dagster_dev["port"]
    open_page(page, f"http://127.0.0.1:{port}/locations/nait_pipeline/asset-groups/subsets")
    # The graph shows the nodes around its centre only (which one depends on the layout): any subsets asset.
    page.get_by_text(re.compile(r"^[a-z_0-9]+_subsets$")).first.wait_for(timeout=120_000)
    page.wait_for_timeout(2000)
    page.screenshot(path=str(shots / "asset_graph_subsets.png"))
    materialize_by_clicking(page, dagster_dev, "warehouse")
    open_page(page, f"http://127.0.0.1:{port}/assets/warehouse")
    page.wait_for_timeout(2000)
    page.screenshot(path=str(shots / "warehouse_materialized.png"))
    import duckdb

    with duckdb.connect(str(dagster_dev["store"] / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM pool_examples").fetchone()[0] == 20
        assert con.execute("SELECT count(*) FROM current_subsets WHERE method = 'length'").fetchone()[0] >= 1


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


def test_a_dropped_pool_file_flows_to_a_subset_diff(dagster_dev, browser_page, shots):
    """The walkthrough (docs/walkthrough.md): a file dropped in the pools folder is ingested by `new_pool_files` once
    it held still, `unfeaturized_pool_shards` featurizes only its shard, the length subsets re-selected
    by clicking get a new version, and the diff names the new rows and the changed pool version."""
    home, data, page = dagster_dev["home"], dagster_dev["data"], browser_page
    ingests = _materializations(home, "it_pool")
    old_shard = _materializations(home, "pool_activations", "tiny-0000")
    # Longer than every row of the set-up pool, so the length subsets must take them.
    (data / "pools" / "late.jsonl").write_text("".join(json.dumps({
        "instruction": f"Describe in detail how ledger number {i} is reconciled at the end of the quarter.",
        "output": " ".join(["Every entry is matched against the bank statement and the difference is booked."] * 6)})
        + "\n" for i in range(6)))
    wait_for_materialization(dagster_dev, "it_pool", ingests, "the sensor-launched ingest of late.jsonl")
    wait_for_materialization(dagster_dev, "pool_activations", 0, "the sensor-launched featurization of late-0000",
                             partition="late-0000")
    assert _materializations(home, "pool_activations", "tiny-0000") == old_shard, "an old shard was featurized again"
    with _instance(home) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("pool_activations"))
        assert event.asset_materialization.partition == "late-0000"
        assert event.asset_materialization.metadata["row_count"].value == 6
    open_page(page, f"http://127.0.0.1:{dagster_dev['port']}/runs")
    page.wait_for_timeout(2000)
    page.screenshot(path=str(shots / "runs_started_by_sensors.png"))

    for asset in ("length_scores", "length_subsets", "subset_diffs", "warehouse"):
        materialize_by_clicking(page, dagster_dev, asset)
    with _instance(home) as instance:
        changes = instance.get_latest_materialization_event(dg.AssetKey("subset_diffs")).asset_materialization
        assert "pool_version:" in changes.metadata["changes"].value and "param " not in changes.metadata["changes"].value
    open_page(page, f"http://127.0.0.1:{dagster_dev['port']}/assets/subset_diffs")
    page.wait_for_timeout(2000)
    page.screenshot(path=str(shots / "subset_diffs.png"), full_page=True)

    from nait_pipeline.lib.io import sql

    with sql.connect_read_only(dagster_dev["store"] / "warehouse.duckdb") as con:
        changes = con.execute(sql.load_query("subset_changes")).fetchall()
        columns = [c[0] for c in con.description]
        length = [dict(zip(columns, row)) for row in changes if row[0] == "length"]
        # The pool changed and with it the scores read; no parameter a person chose did.
        assert length and all(c["pool_changed"] and c["scores_changed"] and not c["params_changed"] for c in length)
        old, new = length[0]["old_version"], length[0]["new_version"]
        rows = con.execute(sql.load_query("subset_diff"), {"old_version": old, "new_version": new}).fetchall()
        added = [row[0] for row in rows if row[1] == "added"]
        assert added and all(example.startswith("late") for example in added), rows
