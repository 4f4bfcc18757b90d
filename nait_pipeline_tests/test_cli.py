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
