"""Evaluation building blocks on hand-made cases: the code sandbox and answer scoring."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nait_pipeline.lib.evaluation import metrics
from nait_pipeline.lib.evaluation.sandbox import network_namespace_available, run_program


@pytest.fixture(scope="module")
def mbpp_row(shared_data):
    table = pq.read_table(shared_data / "targets" / "mbpp.parquet", filters=[("id", "=", "mbpp-11")])
    return table.to_pylist()[0]


def test_reference_mbpp_solution_passes_and_a_wrong_one_fails(mbpp_row):
    tests = "\n".join(filter(None, [mbpp_row["test_setup_code"], mbpp_row["test"]]))
    assert run_program(mbpp_row["answer"] + "\n" + tests).passed
    wrong = run_program("def " + mbpp_row["answer"].split("def ", 1)[1].split("(", 1)[0] + "(*a, **k):\n    return None\n"
                        + tests)
    assert not wrong.passed and wrong.reason.startswith("failed: AssertionError")


def test_infinite_loop_is_killed():
    result = run_program("while True:\n    pass\n", timeout_s=2)
    assert not result.passed and result.reason in ("timeout", "killed by signal 9", "killed by signal 24")


def test_network_is_refused():
    result = run_program("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9', timeout=2)\n")
    assert not result.passed and "network access is not allowed" in result.reason


def test_raw_sockets_find_no_network_in_the_namespace():
    # _socket bypasses the Python guard. In an empty network namespace there is no route at all, not
    # even to loopback; where the kernel refuses `unshare -n` the connection is at least refused.
    result = run_program("import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', 9))\n")
    expected = "Network is unreachable" if network_namespace_available() else "Connection refused"
    assert not result.passed and expected in result.reason


def test_writing_outside_the_sandbox_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_program(f"open({str(target)!r}, 'w').write('x')\n")
    assert not result.passed and "outside the sandbox" in result.reason
    assert not target.exists()
    assert run_program("open('inside.txt', 'w').write('ok')\nassert open('inside.txt').read() == 'ok'\n").passed


def test_memory_bomb_fails_without_hurting_the_host():
    result = run_program("x = bytearray(4 * 1024 ** 3)\n", memory_mb=512)
    assert not result.passed and "MemoryError" in result.reason


def test_processes_cannot_be_spawned():
    result = run_program("import os\nos.system('touch /tmp/nait_sandbox_probe')\n")
    assert not result.passed and not Path("/tmp/nait_sandbox_probe").exists()
    assert os.path.exists("/tmp")


@pytest.mark.parametrize("generated, reference, correct", [
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72", True),
    ("So the answer is 1,250.", "1250", True),
    ("She pays $18.00 in total", "18", True),
    ("The answer is 7 apples, not 8", "8", False),
    ("no idea", "3", False),
])
def test_gsm8k_exact_match_on_the_final_number(generated, reference, correct):
    assert metrics.gsm8k_correct(generated, reference) is correct


def test_bbh_exact_match():
    assert metrics.bbh_correct("Let's think step by step. ... So the answer is (B).", "(B)")
    assert metrics.bbh_correct("valid\nbecause ...", "valid")
    assert not metrics.bbh_correct("So the answer is False.", "True")


def test_mmlu_choice_by_log_likelihood():
    assert metrics.mmlu_prediction([-4.2, -1.3, -2.0, -9.9]) == "B"
    assert metrics.mmlu_prediction([-1.0, -1.0, -3.0, -2.0]) == "A"  # ties: the first letter
    with pytest.raises(ValueError, match="4 finite log-likelihoods"):
        metrics.mmlu_prediction([-1.0, float("nan"), -2.0, -3.0])


def test_code_extraction_prefers_the_fenced_block():
    assert metrics.extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1"
    assert metrics.extract_code("def g(): pass") == "def g(): pass"


def test_code_programs_pass_with_reference_solutions_and_fail_with_wrong_ones(shared_data):
    import json

    from nait_pipeline.lib.data import targets
    from nait_pipeline.lib.evaluation.benchmarks import code_program

    rows = targets.evaluation_rows(shared_data / "targets", "code").rows
    humaneval = [r for r in rows if r["example_id"] == "HumanEval/0"][0]
    mbpp = [r for r in rows if r["task"] == "mbpp"][0]
    assert run_program(code_program(humaneval, humaneval["answer"])).passed  # body only: the prompt is prepended
    full_function = "```python\n" + humaneval["prompt"] + humaneval["answer"] + "```"
    assert run_program(code_program(humaneval, full_function)).passed
    entry = json.loads(humaneval["extra_json"])["entry_point"]
    assert not run_program(code_program(humaneval, f"def {entry}(*args):\n    return True\n")).passed
    assert run_program(code_program(mbpp, f"Here you go:\n```python\n{mbpp['answer']}\n```")).passed
    assert not run_program(code_program(mbpp, "```python\nx = 1\n```")).passed
