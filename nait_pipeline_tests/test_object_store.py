"""The lake on object storage, against a real S3 API (moto in server mode on 127.0.0.1): content-named
objects published by conditional manifests, killed and racing writers, faults named by URI, and every
method selecting the same subsets from a lake on S3 as from a local folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from nait_pipeline.defs.assets.methods import score_assets, subset_assets
from nait_pipeline.defs.assets.nait import capability_directions
from nait_pipeline.defs.partitions import CAPABILITIES_NAME
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.io import sql, storage
from nait_pipeline.lib.io.contract import ensure_contract_tables
from nait_pipeline.lib.io.lake import atomic_path, read_metadata, read_table, read_table_and_metadata, write_parquet
from nait_pipeline.lib.io.settings import Settings
from nait_pipeline.lib.methods import METHODS, scorers
from nait_pipeline_tests import synthetic_lake
from nait_pipeline_tests.test_methods import PRE_REGISTRY_NAIT


def settings_for(store: str, endpoint: str | None, local: Path) -> Settings:
    return Settings(data_dir=local, store_dir=store if store.startswith("s3://") else Path(store), model=None,
                    pool_sample=None, endpoint_url=endpoint, local_dir=local)


def test_a_lake_file_reads_back_the_same_on_both_backends(lake_store):
    layout = settings_for(*lake_store).layout
    path = layout.scores("nait", "math")
    write_parquet(pa.table({"example_id": ["a", "b"], "score": [1.0, 2.0]}), path, {"scores_version": "v1"})
    assert path.exists() and not layout.scores("nait", "code").exists()
    assert read_table(path, columns=["score"]).column("score").to_pylist() == [1.0, 2.0]
    assert read_metadata(path) == {"scores_version": "v1"}
    table, metadata = read_table_and_metadata(path, ["score"])  # one footer read for both
    assert table.column("score").to_pylist() == [1.0, 2.0] and metadata == {"scores_version": "v1"}
    assert [p.name for p in (layout.root / "scores").glob("*.parquet")] == ["nait__math.parquet"]
    write_parquet(pa.table({"example_id": ["c"], "score": [3.0]}), path)
    assert read_table(path).column("example_id").to_pylist() == ["c"]
    path.unlink()
    assert not path.exists()


def test_objects_are_immutable_and_named_by_content(s3_store, s3_endpoint, tmp_path):
    layout = settings_for(s3_store, s3_endpoint, tmp_path).layout
    fs = layout.root.fs
    first = pa.table({"x": [1]})
    write_parquet(first, layout.scores("nait", "math"))
    object_one = fs.info(layout.scores("nait", "math").path)["object"]
    write_parquet(first, layout.scores("nait", "code"))  # same bytes, other file: one object
    assert fs.info(layout.scores("nait", "code").path)["object"].rsplit("/", 2)[-2] == object_one.rsplit("/", 2)[-2]
    write_parquet(pa.table({"x": [2]}), layout.scores("nait", "math"))
    object_two = fs.info(layout.scores("nait", "math").path)["object"]
    assert object_two != object_one and object_two.endswith("/nait__math.parquet")
    assert fs.s3.cat_file(object_one)  # the replaced object is still there for readers that opened it


def test_a_failed_write_publishes_nothing(s3_store, s3_endpoint, tmp_path):
    layout = settings_for(s3_store, s3_endpoint, tmp_path).layout
    path = layout.directions("math")
    write_parquet(pa.table({"v": [1]}), path)
    with pytest.raises(RuntimeError, match="died"):
        with atomic_path(path, ".parquet") as tmp:
            tmp.write_bytes(b"half a parquet file")
            raise RuntimeError("writer died")
    assert read_table(path).column("v").to_pylist() == [1]


def test_a_writer_killed_mid_upload_leaves_nothing_visible_and_a_rerun_publishes(s3_store, s3_endpoint, tmp_path):
    """A child process uploads a 12 MiB file in 5 MiB parts and dies (os._exit) after the first part."""
    layout = settings_for(s3_store, s3_endpoint, tmp_path).layout
    path = layout.pool_activations("p0-s0000")
    child = textwrap.dedent(f"""
        import os, sys
        import numpy as np, pyarrow as pa
        import s3fs
        from nait_pipeline.lib.io.lake import write_parquet
        from nait_pipeline.lib.io.settings import Settings
        from pathlib import Path
        calls = []
        original = s3fs.S3FileSystem._call_s3
        async def dying(self, method, *args, **kwargs):
            if method == "upload_part":
                calls.append(method)
                if len(calls) == 2:
                    os._exit(9)
            return await original(self, method, *args, **kwargs)
        s3fs.S3FileSystem._call_s3 = dying
        from nait_pipeline.lib.io import storage
        storage.UPLOAD_PART_BYTES = 5 * 2**20
        layout = Settings(data_dir=Path("."), store_dir={s3_store!r}, model=None, pool_sample=None,
                          endpoint_url={s3_endpoint!r}, local_dir=Path({str(tmp_path)!r})).layout
        noise = np.random.default_rng(0).integers(0, 255, 12 * 2**20, dtype=np.uint8)
        write_parquet(pa.table({{"blob": [noise.tobytes()]}}), layout.pool_activations("p0-s0000"),
                      compression="none")
        print("finished")
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stdout + done.stderr
    assert not path.exists()
    assert not layout.root.fs.s3.find(f"{layout.root.path}/{storage.OBJECTS}")  # no object completed
    write_parquet(pa.table({"v": [1]}), path)  # a rerun publishes
    assert read_table(path).column("v").to_pylist() == [1]


def test_a_publication_race_has_one_winner_and_a_clear_error(lake_store):
    """Two writers of one lake file: the one that began before the other finished is refused (a manifest put
    with If-Match on S3; an identity check under the folder's lock locally), for a replaced file and for a
    new one; a race that wrote the same bytes is no conflict."""
    layout = settings_for(*lake_store).layout
    path = layout.scores("rds", "math")
    write_parquet(pa.table({"v": [0]}), path)
    with pytest.raises(storage.PublishConflict, match="another writer"):
        with atomic_path(path, ".parquet") as slow:  # began before the other writer finished
            write_parquet(pa.table({"v": [1]}), path)
            pa.parquet.write_table(pa.table({"v": [2]}), slow)
    assert read_table(path).column("v").to_pylist() == [1]
    with atomic_path(path, ".parquet") as same:
        write_parquet(pa.table({"v": [3]}), path)
        same.write_bytes(path.read_bytes())
    assert read_table(path).column("v").to_pylist() == [3]
    fresh = layout.scores("rds", "code")
    with pytest.raises(storage.PublishConflict, match="another writer"):
        with atomic_path(fresh, ".parquet") as late:  # both create it: If-None-Match / the file appeared
            write_parquet(pa.table({"v": [4]}), fresh)
            pa.parquet.write_table(pa.table({"v": [5]}), late)
    assert read_table(fresh).column("v").to_pylist() == [4]
    write_parquet(pa.table({"v": [6]}), fresh)  # a writer that began after it replaces it
    assert read_table(fresh).column("v").to_pylist() == [6]


def test_local_writers_in_several_processes_never_both_win(tmp_path):
    """Processes replacing one local file at once, each from what it saw when it began: every publication
    either lands or is refused, and the file always holds one whole write."""
    path = tmp_path / "scores" / "x.parquet"
    write_parquet(pa.table({"writer": [-1], "n": [0]}), path)
    child = textwrap.dedent(f"""
        import sys, pyarrow as pa, pyarrow.parquet as pq
        from pathlib import Path
        from nait_pipeline.lib.io import storage
        from nait_pipeline.lib.io.lake import atomic_path, read_table
        path, me, won, lost = Path({str(path)!r}), int(sys.argv[1]), 0, 0
        for n in range(40):
            try:
                with atomic_path(path, ".parquet") as tmp:
                    seen = read_table(path).column("n")[0].as_py()
                    pq.write_table(pa.table({{"writer": [me], "n": [seen + 1]}}), tmp)
                won += 1
            except storage.PublishConflict:
                lost += 1
        print(won, lost)
    """)
    writers = [subprocess.Popen([sys.executable, "-c", child, str(i)], stdout=subprocess.PIPE, text=True)
               for i in range(3)]
    counts = [tuple(map(int, w.communicate(timeout=120)[0].split())) for w in writers]
    assert all(w.returncode == 0 for w in writers)
    # Each landed write read the one before it: the counter equals the number of wins, so none was lost.
    assert read_table(path).column("n")[0].as_py() == sum(won for won, _ in counts)
    assert sum(won + lost for won, lost in counts) == 120


def test_a_store_that_ignores_conditional_puts_is_refused(s3_store, s3_endpoint, monkeypatch):
    import s3fs

    original = s3fs.S3FileSystem.call_s3

    def ignoring_conditions(self, method, *args, **kwargs):
        kwargs.pop("IfNoneMatch", None)
        kwargs.pop("IfMatch", None)
        return original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", ignoring_conditions)
    with pytest.raises(storage.StorageError, match="ignored a conditional put"):
        storage.lake_root(s3_store, s3_endpoint)


def test_faults_name_the_uri(s3_endpoint, s3_store):
    with pytest.raises(storage.StorageError, match=r"s3://no-such-bucket-here.*does not exist"):
        storage.lake_root("s3://no-such-bucket-here/store", s3_endpoint)
    with pytest.raises(storage.StorageError, match=r"s3://.*not reachable"):
        storage.lake_root(s3_store, "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ValueError, match="name a bucket"):
        storage.lake_root("s3://", s3_endpoint)


def test_credentials_the_store_rejects_are_named_with_the_uri(s3_endpoint, s3_store):
    """Expired or unknown credentials are refused by S3 (403 / ExpiredToken): moto with IAM authentication on
    rejects the dummy keys, at start-up and on a read of a lake that was readable a moment ago."""
    from moto.core.authorization import enable_iam_authentication

    lake = storage.lake_root(s3_store, s3_endpoint)
    write_parquet(pa.table({"x": [1]}), lake / "t.parquet")
    bucket = s3_store[len("s3://"):].split("/")[0]
    storage.LakeFileSystem.clear_instance_cache()
    with enable_iam_authentication():
        with pytest.raises(storage.StorageError, match=rf"s3://{bucket}.*access denied.*credentials"):
            storage.lake_root(s3_store, s3_endpoint)
        with pytest.raises(storage.StorageError, match=rf"s3://{bucket}/store/lake/.*access denied"):
            read_table(lake / "t.parquet")


RUN_CONFIG = {"g2is_subsets": {"config": {"budget_ratio": 0.1}}}


def _select(store: str, endpoint: str | None, local: Path, methods) -> tuple[dict, dict]:
    """Every scorer the methods need, then their subsets, on a synthetic lake in ``store``."""
    resource = LakeResource(data_dir=str(local), store_dir=store, endpoint_url=endpoint, local_dir=str(local))
    layout = synthetic_lake.build(resource.layout.root)
    assets = [capability_directions, *score_assets, *subset_assets]
    needed = {s.name for s in scorers().values() if any(METHODS[m].scorer is s for m in methods)}

    def run(selection, key=None):
        result = dg.materialize(assets, selection=selection, partition_key=key, instance=instance,
                                resources={"pipeline": resource},
                                run_config={"ops": {k: v for k, v in RUN_CONFIG.items() if k in selection}})
        assert result.success
        return result

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(CAPABILITIES_NAME, list(synthetic_lake.CAPABILITIES))
        for capability in synthetic_lake.CAPABILITIES:
            run(["capability_directions"], capability)
        for scorer in scorers().values():
            for key in (synthetic_lake.CAPABILITIES if scorer.targeted else [None]) if scorer.name in needed else []:
                run([f"{scorer.name}_scores"], key)
        versions = {name: run([f"{name}_subsets"]).asset_materializations_for_node(f"{name}_subsets")[0]
                    .metadata["subset_versions"].value for name in methods}
    rows = {v: read_table(layout.subset(v)).sort_by("rank").select(["example_id", "score"]).to_pylist()
            for by_key in versions.values() for v in by_key.values()}
    return versions, rows


def test_nait_selects_its_pinned_subsets_from_an_s3_lake(s3_store, s3_endpoint, tmp_path):
    """The pre-registry subsets test_methods pins for a local lake, from a lake on S3."""
    versions, rows = _select(s3_store, s3_endpoint, tmp_path / "local", ["nait"])
    got = {c: [v, [r["example_id"] for r in rows[v]]] for c, v in versions["nait"].items()}
    assert got == PRE_REGISTRY_NAIT


@pytest.mark.slow
def test_every_method_selects_the_same_subsets_from_s3_as_from_a_folder(s3_store, s3_endpoint, tmp_path):
    local = _select(str(tmp_path / "store"), None, tmp_path / "store", sorted(METHODS))
    remote = _select(s3_store, s3_endpoint, tmp_path / "local", sorted(METHODS))
    assert remote[0] == local[0]
    for version, rows in local[1].items():
        assert remote[1][version] == rows, version
    assert len(local[0]) == len(METHODS)


def test_the_warehouse_reads_an_s3_lake_read_only(s3_store, s3_endpoint, tmp_path):
    settings = settings_for(s3_store, s3_endpoint, tmp_path)
    layout = synthetic_lake.build(settings.layout.root)
    ensure_contract_tables(settings.lake_dir)
    views = sql.build_warehouse(settings.warehouse_path, settings.lake_dir)
    assert {"pool_examples", "pool_activations", "scores"} <= set(views)
    with sql.connect_read_only(settings.warehouse_path) as con:
        assert con.execute("SELECT count(*) FROM pool_examples").fetchone()[0] == 40
        shards = [r[0] for r in con.execute("SELECT DISTINCT shard FROM pool_activations ORDER BY 1").fetchall()]
    assert shards == ["p0-s0000", "p0-s0001", "p0-s0002"]
    # A file published after the build appears at the next build (the warehouse commits what SQL sees).
    write_parquet(pa.table({"example_id": ["pool-000001"], "score": np.array([0.5]), "method": ["x"],
                            "capability": ["math"]}), layout.scores("x", "math"))
    sql.build_warehouse(settings.warehouse_path, settings.lake_dir)
    table = sql.run_query(settings.warehouse_path, "top_subset_examples",
                          {"method": "nait", "capability": "math", "k": 3})
    assert table.num_rows == 0  # no subsets yet: the query runs against the S3 views all the same
    with sql.connect_read_only(settings.warehouse_path) as con:
        assert con.execute("SELECT count(*) FROM scores WHERE method = 'x'").fetchone()[0] == 1
    # `nait-pipeline query` with a settings file naming the S3 store: the analyst's path, read-only.
    settings_file = tmp_path / "nait_settings.toml"
    settings_file.write_text(f'data_dir = "{tmp_path}"\nstore_dir = "{s3_store}"\n'
                             f'[object_store]\nendpoint_url = "{s3_endpoint}"\nlocal_dir = "{tmp_path}"\n')
    done = subprocess.run([sys.executable, "-m", "nait_pipeline.cli", "query", "top_subset_examples", "--param",
                           "method=nait", "--param", "capability=math", "--param", "k=3"], capture_output=True, text=True,
                          env={**os.environ, "NAIT_SETTINGS": str(settings_file)})
    assert done.returncode == 0, done.stderr
    assert "shape: (0," in done.stdout


def test_the_s3_extra_pins_are_what_is_installed():
    """The extra's pins resolve together (s3fs pins fsspec exactly; datasets caps fsspec): what the tests ran."""
    import tomllib
    from importlib.metadata import version

    from nait_pipeline.lib.io.settings import PROJECT_ROOT

    extra = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["s3"]
    pins = dict(requirement.split("==") for requirement in extra)
    assert pins == {name: version(name) for name in pins}


@pytest.mark.parametrize("same_store", [True, False])
def test_two_runs_featurizing_one_shard_at_once_leave_one_store(s3_store, s3_endpoint, tmp_path, monkeypatch,
                                                                 same_store):
    """The run that publishes second finds the first's manifest: the same store is taken as its own, another
    one (here: another model) is a conflict naming the manifest."""
    import pyarrow.parquet as pq

    from nait_pipeline.lib.features import forward
    from nait_pipeline.lib.features.featurize import FeaturizerSpec
    from nait_pipeline.lib.models.model_io import ModelInfo
    from nait_pipeline_tests.test_featurize import TokenRows, tiny_llama

    layout = settings_for(s3_store, s3_endpoint, tmp_path).layout
    destination = layout.pool_activations("p-0000")
    model = ModelInfo(model_id="tiny", path="unused", architecture="LlamaForCausalLM", num_layers=4, hidden_size=32,
                      vocab_size=128, template_hash="t", has_chat_template=False)
    other_model = ModelInfo(**{**model.as_dict(), "model_id": "tiny-other"})
    rows, ids, spec = [{"index": 0}, {"index": 1}], ["a", "b"], FeaturizerSpec(dtype="float32")
    lm = tiny_llama()

    def featurize(info: ModelInfo):
        return forward.featurize_into(destination, info, rows, ids, spec, "input-1",
                                      lambda: (lm, TokenRows([[5, 6, 7], [8, 9]])))

    real_write, raced = pq.write_table, []

    def write_after_the_other_run_published(table, where, **kwargs):
        if not raced:  # this run's upload is under way when the other run publishes the same shard
            raced.append(None)
            raced[0] = featurize(model if same_store else other_model)
        return real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_after_the_other_run_published)
    if same_store:
        ours = featurize(model)
        assert read_metadata(destination)["store_version"] == ours.version == raced[0].version
    else:
        with pytest.raises(storage.PublishConflict, match="another writer published"):
            featurize(model)
        assert read_metadata(destination)["store_version"] == raced[0].version  # the winner's, whole
    assert read_table(destination, columns=["example_id"]).column("example_id").to_pylist() == ids
