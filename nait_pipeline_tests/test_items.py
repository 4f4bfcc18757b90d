"""Per-item metrics on hand-made items: the calculator annotations, option parsing, the option-normalised
log-probability, stratified sampling, not-computable items kept with their reason, and the real
model's scores obeying what they mean (option probabilities over a set sum to one)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nait_pipeline.lib.evaluation import items


def test_calculator_annotations_are_stripped():
    solution = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    assert items.strip_calculator(solution) == "Janet sells 16 - 3 - 4 = 9 duck eggs.\nShe makes 9 * 2 = $18.\n#### 18"
    assert items.gold_reference("math", {"task": "gsm8k", "answer": "a <<1+1=2>>2"}) == "a 2"
    assert items.gold_reference("code", {"task": "mbpp", "answer": "x = <<y>>"}) == "x = <<y>>"  # only GSM8K


def test_bbh_option_sets():
    prompt = "Which is a fruit?\nOptions:\n(A) carrot\n(B) apple\n(C) potato"
    assert items.bbh_options("bbh/date_understanding", prompt) == ["(A)", "(B)", "(C)"]
    assert items.bbh_options("bbh/boolean_expressions", "not ( True ) is") == ["True", "False"]
    assert items.bbh_options("bbh/object_counting", "I have a chair. How many?") is None


def test_option_normalised_score_is_the_log_probability_within_the_set():
    logliks = np.log(np.array([0.02, 0.06, 0.02]))  # unnormalised: the set holds 0.1 of the mass
    assert items.normalised_option_score(logliks, 1) == pytest.approx(np.log(0.6))
    assert items.normalised_option_score(np.array([-1000.0, -1001.0]), 0) == pytest.approx(-np.log1p(np.exp(-1)))


def test_stratified_sample_is_fixed_and_capped_per_stratum():
    rows = [{"example_id": f"{task}-{i:03d}", "task": task} for task in ("a", "b") for i in range(10)]
    sample = items.stratified_sample(rows, 3, lambda r: r["task"])
    assert [r["task"] for r in sample].count("a") == 3 and [r["task"] for r in sample].count("b") == 3
    assert items.stratified_sample(list(reversed(rows)), 3, lambda r: r["task"]) == sample
    assert items.stratified_sample(rows, 3, lambda r: r["task"], seed=1) != sample


def test_aggregate_keeps_the_not_computable_count():
    scores = [items.ItemScore("bbh/x", "1", items.OPTION, -0.5), items.ItemScore("bbh/y", "2", items.OPTION, -1.5),
              items.ItemScore("bbh/z", "3", items.OPTION, None, items.NOT_COMPUTABLE, "free-form answer")]
    assert items.aggregate(scores) == {("bbh", items.OPTION): {"value": -1.0, "n": 2, "not_computable": 1}}


@pytest.fixture(scope="module")
def model(model_dir):
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate

    return model_io.load_causal_lm(model_dir).eval(), ChatTemplate(model_io.load_tokenizer(model_dir))


def _option_loglik_by_full_forwards(lm, template, prompt, options):
    """The reference: each option rendered and scored by its own forward pass."""
    import torch

    out = []
    for option in options:
        t = template.tokenize(prompt, "", option, 2048)
        with torch.inference_mode():
            logprobs = torch.log_softmax(lm(input_ids=torch.tensor([t.input_ids])).logits[0].float(), -1)
        n = len(template.tokenizer(option, add_special_tokens=False)["input_ids"])
        out.append(sum(float(logprobs[p - 1, t.input_ids[p]]) for p in range(t.response_start, t.response_start + n)))
    return out


def test_real_model_item_scores(model):
    lm, template = model
    rows = [{"example_id": "g1", "task": "gsm8k", "prompt": "What is 2 + 3?", "answer": "2 + 3 = 5.\n#### 5"},
            {"example_id": "g2", "task": "gsm8k", "prompt": "What is 4 + 4?", "answer": "  "}]
    gold = items.gold_scores(lm, template, rows, "gsm8k")
    assert gold[0].status == items.OK and -10 < gold[0].value < 0
    assert gold[1].status == items.NOT_COMPUTABLE and gold[1].reason == "empty reference"
    # The option score is a log-probability over the set: over every choice of gold, they sum to one.
    prompt = "not ( True ) and ( True ) is"
    logliks = items.option_loglik(lm, template, prompt, ["True", "False"])
    assert np.exp([items.normalised_option_score(logliks, g) for g in (0, 1)]).sum() == pytest.approx(1.0)
    bbh = items.bbh_scores(lm, template, [
        {"example_id": "b1", "task": "bbh/boolean_expressions", "prompt": prompt, "answer": "False",
         "extra_json": json.dumps({"target": "False"})},
        {"example_id": "b2", "task": "bbh/object_counting", "prompt": "I have two chairs. How many?", "answer": "2",
         "extra_json": "{}"}])
    assert logliks == pytest.approx(_option_loglik_by_full_forwards(lm, template, prompt, ["True", "False"]), abs=1e-4)
    options = ["(A)", "(B)", "(C) a much longer option", "(D)"]  # shared leading tokens, unequal lengths
    assert items.option_loglik(lm, template, prompt, options) == pytest.approx(
        _option_loglik_by_full_forwards(lm, template, prompt, options), abs=1e-4)
    assert bbh[0].status == items.OK and bbh[0].value == pytest.approx(items.normalised_option_score(logliks, 1))
    assert bbh[1].status == items.NOT_COMPUTABLE and "no option set" in bbh[1].reason
    mmlu = items.mmlu_scores(lm, template, [
        {"example_id": "m1", "task": "mmlu/x", "prompt": "2 + 2 = ?\nA. 3\nB. 4\nC. 5\nD. 6", "answer": "B"},
        {"example_id": "m2", "task": "mmlu/x", "prompt": "Pick one.\nA. a\nB. b\nC. c\nD. d", "answer": "E"}])
    assert mmlu[0].status == items.OK and mmlu[0].value < 0
    assert mmlu[1].status == items.NOT_COMPUTABLE and "not a letter" in mmlu[1].reason
