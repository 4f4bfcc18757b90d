"""Per-capability evaluation on the held-out test splits: which measures each benchmark gets.

Every capability gets the mean answer NLL of its reference answers. On top: MMLU 4-choice accuracy
by log-likelihood (knowledge), GSM8K exact match on the final number (math), BBH exact match
(reasoning), and pass@1 of generated code run in the sandbox for MBPP and HumanEval (code).
Rows come from `target_test_sets` (split `test` only), sampled with a fixed seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.evaluation import evaluate, metrics
from nait_pipeline.lib.evaluation.sandbox import run_program
from nait_pipeline.lib.io.hashing import sha256_text
from nait_pipeline.lib.models.template import ChatTemplate

SAMPLE_SEED = 0


@dataclass(frozen=True)
class EvalConfig:
    sample_size: int = 50  # test rows per capability (all of them when fewer)
    max_new_tokens: int = 256
    code_timeout_s: float = 10.0
    batch_size: int = 8
    items_per_capability: int = 200  # per-item, forward-only metrics (items.py); 0: none


def sample_rows(rows: Sequence[dict], size: int) -> list[dict]:
    """A fixed-seed sample: the rows with the smallest hash of (seed, id), in id order."""
    ranked = sorted(rows, key=lambda r: (sha256_text(f"{SAMPLE_SEED}:{r['example_id']}"), r["example_id"]))
    return sorted(ranked[:size], key=lambda r: r["example_id"])


def _extra(row: dict) -> dict:
    return json.loads(row.get("extra_json") or "{}")


def code_program(row: dict, generated: str) -> str:
    """Solution plus tests: MBPP asserts, or HumanEval's check(entry_point)."""
    code = metrics.extract_code(generated)
    extra = _extra(row)
    if "entry_point" in extra:  # HumanEval: complete the given signature unless the model rewrote it
        entry = extra["entry_point"]
        solution = code if f"def {entry}" in code else row["prompt"] + code
        return f"{solution}\n\n{extra['test']}\n\ncheck({entry})\n"
    setup = extra.get("test_setup_code") or ""
    return f"{code}\n\n{setup}\n{extra.get('test', '')}\n"


def code_prompt(row: dict) -> str:
    extra = _extra(row)
    if "entry_point" in extra:
        return f"Complete this Python function. Reply with the whole function in a ```python block.\n\n{row['prompt']}"
    first_test = (extra.get("test") or "").splitlines()[:1]
    return f"{row['prompt']}\nYour code should pass this test:\n{first_test[0] if first_test else ''}\n" \
           "Reply with the Python code in a ```python block."


def evaluate_capability(model, template: ChatTemplate, capability: str, rows: Sequence[dict], config: EvalConfig,
                        log: Callable[[str], None] = lambda _m: None, generator=None) -> list[dict]:
    """Metric rows ``{metric, value, n}`` for one capability's sampled test rows.

    Likelihoods use ``model``; generation uses ``generator`` (``evaluate.make_generator``), by default
    greedy transformers generation with the same model."""
    generator = generator or evaluate.TransformersGenerator(model, template)
    all_rows = rows
    rows = sample_rows(rows, config.sample_size)
    if not rows:
        return []
    results = []
    nll = evaluate.answer_nll(model, template, rows)
    finite = nll[np.isfinite(nll)]
    results.append({"metric": "answer_nll", "value": float(finite.mean()) if len(finite) else float("nan"),
                    "n": int(len(finite))})
    log(f"{capability}: answer NLL {results[-1]['value']:.4f} on {len(finite)} rows")
    if capability == "knowledge":
        logliks = evaluate.choice_logliks(model, template, [r["prompt"] for r in rows])
        correct = [metrics.mmlu_prediction(l) == r["answer"].strip() for l, r in zip(logliks, rows)]
        results.append({"metric": "mmlu_accuracy", "value": float(np.mean(correct)), "n": len(rows)})
    elif capability in ("math", "reasoning"):
        generated = generator([r["prompt"] for r in rows], config.max_new_tokens, config.batch_size)
        if capability == "math":
            correct = [metrics.gsm8k_correct(g, _extra(r)["final_answer"]) for g, r in zip(generated, rows)]
            results.append({"metric": "gsm8k_exact_match", "value": float(np.mean(correct)), "n": len(rows)})
        else:
            correct = [metrics.bbh_correct(g, _extra(r).get("target") or r["answer"]) for g, r in zip(generated, rows)]
            results.append({"metric": "bbh_exact_match", "value": float(np.mean(correct)), "n": len(rows)})
    elif capability == "code":
        for benchmark in ("mbpp", "humaneval"):  # each benchmark gets its own sample of sample_size rows
            subset = sample_rows([r for r in all_rows if r["task"].startswith(benchmark)], config.sample_size)
            if not subset:
                continue
            generated = generator([code_prompt(r) for r in subset], config.max_new_tokens, config.batch_size)
            passed = [run_program(code_program(r, g), timeout_s=config.code_timeout_s).passed
                      for r, g in zip(subset, generated)]
            results.append({"metric": f"{benchmark}_pass@1", "value": float(np.mean(passed)), "n": len(subset)})
    for row in results[1:]:
        log(f"{capability}: {row['metric']} {row['value']:.3f} on {row['n']} rows")
    return results
