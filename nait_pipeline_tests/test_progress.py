"""Progress lines a person can read: done/total, share, rate, elapsed and time left."""

from __future__ import annotations

from nait_pipeline.lib.io import progress


def test_progress_line_counts_rate_and_time_left(monkeypatch):
    clock = iter([100.0, 110.0, 130.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    meter = progress.Progress("featurizing shard-0000", total=400)  # started at t=100
    assert meter.update(100, amount=5000) == \
        "featurizing shard-0000: 100/400 rows (25%), 500 tokens/s, 10s, 30s left"
    assert meter.update(400, amount=12000) == "featurizing shard-0000: 400/400 rows (100%), 400 tokens/s, 30s"


def test_console_output_only_when_the_cli_asks(monkeypatch, capsys):
    monkeypatch.delenv(progress.CONSOLE_ENV, raising=False)
    monkeypatch.setattr(progress, "_last_logged", [0.0])
    progress.to_console("quiet")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(progress.CONSOLE_ENV, "1")
    progress.to_console("first", final=False)
    progress.to_console("too soon after it", final=False)  # a log file gets one line per LOG_EVERY_S
    progress.to_console("done", final=True)
    err = capsys.readouterr().err
    assert "first" in err and "too soon" not in err and "done" in err
