"""The gradient feature kind on the real embedded model: batched per-example LoRA gradients against the
batch-1 loop, the warmup resuming from a killed epoch, the Adam feature and the projection on hand-made
numbers, and the errors a user can hit (no response token, non-finite gradients)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nait_pipeline.lib.features import gradients as gr
from nait_pipeline.lib.features.projection import ProjectionMismatchError, ProjectionSpec, RademacherProjector
from nait_pipeline.lib.models import model_io
from nait_pipeline.lib.models.template import ChatTemplate

ROWS = [{"instruction": f"Add {i} and {i + 3}.", "input": "", "output": f"{i} plus {i + 3} is {2 * i + 3}." * (1 + i % 3)}
        for i in range(5)]
# Loss on both answers of a two-exchange conversation (and on nothing else).
CONVERSATION = {"messages": '[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello."},'
                            '{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]'}
LONG_PROMPT = {"instruction": " ".join(["Explain every step of long division in detail."] * 12), "input": "",
               "output": "Divide, multiply, subtract, bring down."}
CONFIG = gr.WarmupConfig(epochs=2, min_rows=4, max_length=64, lora_r=4, lora_alpha=16, batch_size=2,
                         learning_rate=1e-3)


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def adapted(model_dir, tmp_path_factory):
    """A LoRA model after a short warmup (so every LoRA matrix has a non-zero gradient)."""
    run = tmp_path_factory.mktemp("warmup") / "run"
    checkpoints = gr.warmup(model_dir, ROWS, CONFIG, run, {"test": 1})
    model, exp_avg, exp_avg_sq = gr.load_checkpoint_model(model_dir, CONFIG, checkpoints[-1])
    template = ChatTemplate(model_io.load_tokenizer(model_dir))
    return model, exp_avg, exp_avg_sq, template, checkpoints, run


def test_batched_per_example_gradients_equal_the_batch_1_loop(adapted):
    model, _, _, template, _, _ = adapted
    examples = [template.tokenize_row(r, 64) for r in [*ROWS, CONVERSATION, LONG_PROMPT]]
    assert len(examples[-2].spans()) == 2 and not examples[-2].truncated
    pad = template.tokenizer.pad_token_id
    reference = gr.loop_gradients(model, examples, pad)
    batched = torch.zeros_like(reference)

    def keep(indices, gradients):
        batched[indices] = gradients

    gr.per_example_gradients(model, examples, pad, batch_tokens=256, on_batch=keep)
    assert (batched[-1] == 0).all() and (reference[-1] == 0).all()  # the prompt filled max_length: no response
    cosine = torch.nn.functional.cosine_similarity(batched[:-1], reference[:-1], dim=1)
    assert cosine.min() >= 0.999
    np.testing.assert_allclose(batched.norm(dim=1), reference.norm(dim=1), rtol=1e-3)
    assert batched.shape[1] == gr.count_parameters(model)


def test_a_killed_warmup_resumes_from_its_last_epoch_with_identical_checkpoints(model_dir, adapted, tmp_path):
    _, _, _, _, finished, _ = adapted
    run = tmp_path / "run"
    total_steps = []

    def kill_in_epoch_2(done, total):
        total_steps.append(total)
        if done == total - 1:  # a step of the last epoch: epoch 1's checkpoint is on disk
            raise Killed

    with pytest.raises(Killed):
        gr.warmup(model_dir, ROWS, CONFIG, run, {"test": 1}, progress=kill_in_epoch_2)
    assert (run / "checkpoint-1" / "state.pt").exists() and not (run / "checkpoint-2").exists()
    resumed = gr.warmup(model_dir, ROWS, CONFIG, run, {"test": 1})
    for left, right in zip(finished, resumed):
        assert left.mean_lr == right.mean_lr
        a = torch.load(left.path / "state.pt", weights_only=False)
        b = torch.load(right.path / "state.pt", weights_only=False)
        for name in a["lora"]:
            assert torch.equal(a["lora"][name], b["lora"][name]), name
        assert all(torch.equal(x, y) for x, y in zip(a["exp_avg_sq"], b["exp_avg_sq"]))
    # The learning-rate weights: each epoch's mean rate, normalised (linear decay: epoch 1 weighs more).
    weights = gr.checkpoint_weights(resumed)
    assert np.isclose(sum(weights), 1.0) and weights[0] > weights[1]
    # Another config shares nothing with this run.
    other = gr.warmup(model_dir, ROWS, gr.WarmupConfig(**{**CONFIG.as_dict(), "epochs": 1}), run, {"test": 2})
    assert len(other) == 1 and not (run / "checkpoint-2").exists()


def test_adam_feature_and_projection_on_hand_numbers():
    g = torch.tensor([[2.0, -1.0]])
    m, v = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 4.0])
    # m' = 0.9 m + 0.1 g = (1.1, -0.1); v' = 0.999 v + 0.001 g^2 = (0.5035, 3.997)
    expected = torch.tensor([[1.1 / np.sqrt(0.5035 + 1e-8), -0.1 / np.sqrt(3.997 + 1e-8)]], dtype=torch.float32)
    torch.testing.assert_close(gr.adam_precondition(g, m, v), expected)
    spec = ProjectionSpec(num_params=70, dim=8, seed=3)
    x = torch.randn(4, 70)
    whole = RademacherProjector(spec, block_rows=32).project(x)
    # Blocks are generated from (seed, block) alone: the same matrix whatever the cache or batch.
    uncached = RademacherProjector(spec, block_rows=32, cache_bytes=0).project(x[:2])
    torch.testing.assert_close(uncached, whole[:2])
    # Projection is linear: P(a + b) = P(a) + P(b); another seed gives another matrix.
    torch.testing.assert_close(RademacherProjector(spec, 32).project(x[:1] + x[1:2]), whole[:1] + whole[1:2])
    assert not torch.allclose(RademacherProjector(ProjectionSpec(70, 8, 4), 32).project(x), whole)
    with pytest.raises(ProjectionMismatchError, match="expects 70"):
        RademacherProjector(spec).project(torch.randn(1, 71))


def test_long_prompts_keep_their_response_and_rows_without_one_are_named_or_flagged(adapted, monkeypatch):
    model, exp_avg, exp_avg_sq, template, _, _ = adapted
    projector = RademacherProjector(ProjectionSpec(gr.count_parameters(model), 16))
    # A prompt longer than the window: the last 64 tokens, the response whole at their end.
    kept = gr.tokenize_keeping_response(template, LONG_PROMPT, 64)
    full = template.tokenize(LONG_PROMPT["instruction"], "", LONG_PROMPT["output"], 1 << 30)
    assert kept.truncated and len(kept.input_ids) == 64 and kept.input_ids == full.input_ids[-64:]
    assert kept.input_ids[kept.response_start:] == full.input_ids[full.response_start:]
    # A row with no response token at all (a template that renders an empty answer as nothing).
    real = gr.tokenize_keeping_response

    def no_response_for_empty(template_, row, max_length):
        example = real(template_, row, max_length)
        return gr.TokenizedExample(example.input_ids[: example.response_start], example.response_start, False,
                                   example.response_start) if not row["output"] else example

    monkeypatch.setattr(gr, "tokenize_keeping_response", no_response_for_empty)
    rows, names = [ROWS[0], {"instruction": "Say nothing.", "input": "", "output": ""}], ["ok", "empty"]
    with pytest.raises(gr.GradientInputError, match=r"\['empty'\]"):
        gr.gradient_features(model, exp_avg, exp_avg_sq, template, rows, names, 64, projector, "sgd")
    # A pool row without a response token is kept as a flagged zero vector.
    pool = gr.gradient_features(model, exp_avg, exp_avg_sq, template, rows, names, 64, projector, "adam")
    assert pool.zero_gradient.tolist() == [False, True] and not pool.vectors[1].any()
    assert np.isclose(np.linalg.norm(pool.vectors[0]), 1.0, atol=1e-5)
    name, parameter = gr.lora_parameters(model)[0]
    saved = parameter.data.clone()
    parameter.data[0, 0] = float("nan")
    try:
        with pytest.raises(gr.GradientInputError, match=r"non-finite gradient for rows \['ok'\]"):
            gr.gradient_features(model, exp_avg, exp_avg_sq, template, [ROWS[0]], ["ok"], 64, projector, "adam")
    finally:
        parameter.data.copy_(saved)


def test_few_shot_rows_spread_over_tasks():
    tasks = ["b", "a", "a", "b", "a", "c"]
    ids = ["b1", "a3", "a1", "b2", "a2", "c1"]
    chosen = gr.few_shot_rows(tasks, ids, 4)
    # Turn 1: a1, b1, c1; turn 2: a2 -> in (task, id) order.
    assert [ids[i] for i in chosen] == ["a1", "a2", "b1", "c1"]
    assert len(gr.few_shot_rows(tasks, ids, 0)) == 6


def test_the_warmup_share_is_seeded_and_stable_when_rows_are_added():
    from nait_pipeline.lib.methods.gradients.gradient_pool import warmup_rows

    ids = [f"row-{i:03d}" for i in range(200)]
    config = gr.WarmupConfig(share=0.05, min_rows=4)
    chosen = [ids[i] for i in warmup_rows(ids, config)]
    assert len(chosen) == 10 and chosen == sorted(chosen)
    assert len(warmup_rows(ids[:20], config)) == 4  # min_rows on a small pool
    # 5 more rows: the share is a hash order of (seed, id), so most of the old share stays.
    grown = [ids[i] for i in warmup_rows(ids + [f"new-{i}" for i in range(5)], config)]
    assert len(set(grown) & set(chosen)) >= 8
    assert [ids[i] for i in warmup_rows(ids, gr.WarmupConfig(share=0.05, min_rows=4, seed=1))] != chosen


def test_stores_of_other_checkpoints_or_projections_are_not_mixed(tmp_path: Path):
    features = gr.GradientFeatures(ids=["a", "b"], vectors=np.eye(2, dtype=np.float32),
                                   zero_gradient=np.zeros(2, bool), n_tokens=np.array([3, 4]), seconds=0.1)
    meta = gr.store_identity("m", "t", "adapter", 1, {"seed": 0, "dim": 2}, "adam", 64, "v")
    gr.write_gradient_store(tmp_path / "one.parquet", features, meta)
    gr.write_gradient_store(tmp_path / "two.parquet", features, {**meta, "projection": {"seed": 1, "dim": 2}})
    stored = gr.read_gradient_stores([tmp_path / "one.parquet"])
    np.testing.assert_array_equal(stored.vectors, np.eye(2, dtype=np.float32))
    with pytest.raises(gr.GradientInputError, match="another model, adapter, checkpoint or projection"):
        gr.read_gradient_stores([tmp_path / "one.parquet", tmp_path / "two.parquet"])
