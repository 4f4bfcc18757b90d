"""The command line answers usage errors and bad input with one line, not a traceback."""

from __future__ import annotations

import pytest

from nait_pipeline import cli


@pytest.mark.parametrize("argv, message", [
    (["query", "pool_accounting", "--param", "noequals"], "--param takes NAME=VALUE, got 'noequals'"),
    (["export", "../../etc/passwd", "--out", "x.jsonl"], "is not a subset version name"),
    (["query", "no_such_query"], "no query named 'no_such_query'"),
])
def test_usage_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NAIT_STORE_DIR", str(tmp_path))
    monkeypatch.delenv("NAIT_DEBUG", raising=False)
    (tmp_path / "warehouse.duckdb").touch()  # the query command finds a warehouse to open
    import duckdb

    duckdb.connect(str(tmp_path / "w.duckdb")).close()
    (tmp_path / "w.duckdb").replace(tmp_path / "warehouse.duckdb")
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_methods_lists_every_registered_method(capsys):
    from nait_pipeline.lib.methods import METHODS

    cli.main(["methods"])
    out = capsys.readouterr().out
    assert all(name in out for name in METHODS)
    # every method says what it reads, including those on another feature kind than the forward store
    assert "features: \n" not in out
    assert "less               features: warmup_adapter, pool_gradients, target_gradients" in out


def test_method_steps_run_each_feature_kind_by_its_partitions(tmp_path, monkeypatch):
    from nait_pipeline.lib.io.settings import Settings
    from nait_pipeline_tests import synthetic_lake

    monkeypatch.setattr(cli, "capabilities", lambda settings: ["math", "code"])
    settings = Settings(data_dir=tmp_path, store_dir=tmp_path / "store", model=None, pool_sample=None)
    synthetic_lake.build(settings.lake_dir)
    shards = ["p0-s0000", "p0-s0001", "p0-s0002"]
    steps = cli.method_steps(settings, ["nait", "g2is", "less", "lp_low", "random"])
    assert steps == [
        (["warmup_adapter"], None), (["pool_gradients"], shards), (["target_gradients"], ["math", "code"]),
        (["selector_trajectories"], None), (["selector_clusters"], None),
        (["nait_scores", "less_scores"], ["math", "code"]), (["lp_scores"], None),
        (["gradient_graph"], None),
        (["nait_subsets", "g2is_subsets", "less_subsets", "lp_low_subsets", "random_subsets"], None)]


def test_migrate_store_moves_replicate_models_to_the_folder_the_pipeline_now_reads(tmp_path, monkeypatch, capsys):
    """A replicate's model folder no longer has the run key's "@" (transformers warned about it on every
    load); migrate-store renames an older store's folders so their fine-tunes are kept, not redone."""
    from nait_pipeline.defs.assets.loop import finetuned_dir
    from nait_pipeline.defs.resources import PipelineResource

    monkeypatch.setenv("NAIT_STORE_DIR", str(tmp_path))
    old = tmp_path / "models" / "finetuned" / "nait_c-all-abc@order1"
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    (tmp_path / "models" / "finetuned" / "nait_c-all-abc").mkdir()  # the first order: no "@", untouched
    cli.main(["migrate-store"])
    resource = PipelineResource(data_dir=str(tmp_path), store_dir=str(tmp_path), model="unused")
    moved = finetuned_dir(resource, "nait_c-all-abc@order1")
    assert "@" not in moved.name and (moved / "config.json").exists() and not old.exists()
    assert finetuned_dir(resource, "nait_c-all-abc").exists()
    assert "nait_c-all-abc@order1: renamed" in capsys.readouterr().out
