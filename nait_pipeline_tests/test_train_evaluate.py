"""Fine-tuning and model-side evaluation on a handful of real rows with the real model."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from nait_pipeline.lib.evaluation import evaluate
from nait_pipeline.lib.features.featurize import FeaturizerSpec, featurize
from nait_pipeline.lib.models import model_io
from nait_pipeline.lib.models.template import ChatTemplate
from nait_pipeline.lib.models.train import TrainConfig, fine_tune


@pytest.fixture(scope="module")
def rows(shared_data):
    table = pq.read_table(shared_data / "pools" / "alpaca_cleaned.parquet").slice(0, 200).to_pylist()
    short = [r for r in table if len(r["instruction"]) + len(r["input"]) + len(r["output"]) < 160][:4]
    return [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in short]


@pytest.fixture(scope="module")
def base(model_dir):
    return model_io.load_causal_lm(model_dir), ChatTemplate(model_io.load_tokenizer(model_dir))


def as_qa(rows):
    return [{"prompt": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else ""), "answer": r["output"]}
            for r in rows]


def test_lora_training_learns_the_subset_and_saves_a_plain_model(model_dir, rows, base, tmp_path):
    config = TrainConfig(mode="lora", epochs=5, batch_size=4, learning_rate=2e-3, seed=0)
    result = fine_tune(model_dir, rows, config, tmp_path / "lora")
    assert result.steps == 5 and result.losses[-1] < result.losses[0] * 0.8
    record = json.loads((tmp_path / "lora" / "nait_training.json").read_text())
    assert record["config"]["mode"] == "lora" and record["examples"] == 4
    assert record["config"] == config.as_dict()  # read back equal: how a resumed protocol knows it is done
    tuned = model_io.load_causal_lm(tmp_path / "lora")  # merged: loads without peft
    model, template = base
    before = evaluate.answer_nll(model, template, as_qa(rows))
    after = evaluate.answer_nll(tuned, template, as_qa(rows))
    assert (after < before).all()
    again = fine_tune(model_dir, rows, config, tmp_path / "again")
    assert again.losses == result.losses  # seeded: same losses step for step


def test_full_fine_tuning_changes_every_layer(model_dir, rows, base, tmp_path):
    result = fine_tune(model_dir, rows[:2], TrainConfig(mode="full", epochs=1, batch_size=2, learning_rate=1e-4),
                       tmp_path / "full")
    assert result.steps == 1
    tuned = model_io.load_causal_lm(tmp_path / "full")
    model, _ = base
    changed = [not torch.equal(a, b) for a, b in zip(model.model.layers.parameters(), tuned.model.layers.parameters())]
    assert all(changed)


def test_failed_training_registers_no_model(model_dir, rows, tmp_path):
    with pytest.raises(ValueError, match="lost its response to truncation"):
        fine_tune(model_dir, rows, TrainConfig(max_length=8), tmp_path / "broken")
    assert not (tmp_path / "broken").exists() and not list(tmp_path.glob(".broken*"))


def test_answer_nll_matches_the_featurizer_and_hf_loss(base, rows):
    model, template = base
    nll = evaluate.answer_nll(model, template, as_qa(rows))
    features = featurize(model, template, [{"instruction": q["prompt"], "input": "", "output": q["answer"]}
                                           for q in as_qa(rows)], FeaturizerSpec(dtype="float32"), list("abcd"))
    np.testing.assert_allclose(nll, features.response_loss, rtol=1e-4)


def test_choice_logliks_are_the_next_token_log_probabilities(base):
    model, template = base
    prompt = "Which city is the capital of France?\nA. Berlin\nB. Paris\nC. Rome\nD. Madrid\nAnswer with the letter."
    logliks = evaluate.choice_logliks(model, template, [prompt, prompt + " "])
    assert logliks.shape == (2, 4) and (logliks < 0).all()
    ids = template.tokenizer(template.render_prompt(prompt, ""), add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    letters = [template.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in "ABCD"]
    np.testing.assert_allclose(logliks[0], full[letters].numpy(), atol=1e-4)


def test_greedy_generation_batches_with_left_padding(base):
    model, template = base
    prompts = ["What is the capital of France?", "Write the number that comes after 41, digits only."]
    batched = evaluate.generate(model, template, prompts, max_new_tokens=12, batch_size=2)
    single = [evaluate.generate(model, template, [p], max_new_tokens=12)[0] for p in prompts]
    assert "Paris" in batched[0]
    assert batched == single


@pytest.mark.parametrize("capability, metric", [("knowledge", "mmlu_accuracy"), ("math", "gsm8k_exact_match"),
                                                ("reasoning", "bbh_exact_match"), ("code", None)])
def test_capability_evaluation_on_sampled_test_rows(base, shared_data, capability, metric):
    from nait_pipeline.lib.data import targets
    from nait_pipeline.lib.evaluation.benchmarks import EvalConfig, evaluate_capability, sample_rows

    model, template = base
    rows = targets.evaluation_rows(shared_data / "targets", capability).rows
    config = EvalConfig(sample_size=3, max_new_tokens=24, code_timeout_s=5)
    assert sample_rows(rows, 3) == sample_rows(list(reversed(rows)), 3)  # fixed seed, order-free
    results = evaluate_capability(model, template, capability, rows, config)
    by_metric = {r["metric"]: r for r in results}
    assert by_metric["answer_nll"]["n"] == 3 and 0 < by_metric["answer_nll"]["value"] < 20
    expected = {metric} if metric else {m for m in by_metric if m.endswith("pass@1")}
    assert expected and expected <= set(by_metric)
    for name in expected:
        assert 0.0 <= by_metric[name]["value"] <= 1.0 and by_metric[name]["n"] >= 1


def test_response_loss_equals_the_hf_loss_with_masked_labels(base, model_dir, rows):
    from nait_pipeline.lib.models.train import collate, response_loss

    model, _ = base
    template = ChatTemplate(model_io.load_tokenizer(model_dir))
    examples = [template.tokenize(r["instruction"], r["input"], r["output"], 512) for r in rows]
    input_ids, mask, labels = collate(examples, template.tokenizer.pad_token_id)
    with torch.inference_mode():
        ours = response_loss(model, input_ids, mask, labels)
        reference = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, reference, rtol=1e-5)


def test_length_grouped_batches_cover_every_example_once_and_are_seeded():
    from nait_pipeline.lib.models.template import TokenizedExample
    from nait_pipeline.lib.models.train import length_grouped_batches

    examples = [TokenizedExample(input_ids=list(range(n)), response_start=0, truncated=False, full_length=int(n))
                for n in np.random.default_rng(0).integers(5, 500, size=300)]
    batches = length_grouped_batches(examples, batch_size=8, seed=3, epoch=0)
    flat = [id(e) for batch in batches for e in batch]
    assert sorted(flat) == sorted(id(e) for e in examples)
    assert [[id(e) for e in b] for b in batches] == [[id(e) for e in b] for b in length_grouped_batches(examples, 8, 3, 0)]
    assert [[id(e) for e in b] for b in batches] != [[id(e) for e in b] for b in length_grouped_batches(examples, 8, 3, 1)]
    # Grouped by length: padding is a small share of the tokens, unlike random batches of these lengths.
    padded = sum(len(b) * max(len(e.input_ids) for e in b) for b in batches)
    real = sum(len(e.input_ids) for e in examples)
    assert real / padded > 0.9


def test_generation_backend_falls_back_to_transformers_without_a_gpu(base):
    import importlib.util

    model, template = base
    has_gpu = torch.cuda.is_available()
    expected = "vllm" if has_gpu and importlib.util.find_spec("vllm") else "transformers"
    assert evaluate.choose_generation_backend("auto") == expected
    if not has_gpu:
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            evaluate.choose_generation_backend("vllm")
    with pytest.raises(ValueError, match="must be one of"):
        evaluate.choose_generation_backend("tgi")
    generator = evaluate.make_generator("transformers", model, None, template)
    prompt = ["What is the capital of France?"]
    assert generator(prompt, 12) == evaluate.generate(model, template, prompt, max_new_tokens=12)
