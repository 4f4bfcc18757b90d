"""The featurizer on the real model and real pool rows."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from nait_pipeline.lib.features import featurize as fz
from nait_pipeline.lib.features.feature_store import read_features, write_features
from nait_pipeline.lib.models import model_io
from nait_pipeline.lib.models.template import ChatTemplate


@pytest.fixture(scope="module")
def model_and_template(model_dir):
    return model_io.load_causal_lm(model_dir), ChatTemplate(model_io.load_tokenizer(model_dir))


@pytest.fixture(scope="module")
def pool_rows(shared_data):
    table = pq.read_table(shared_data / "pools" / "alpaca_cleaned.parquet").slice(0, 6)
    return table.to_pylist()


def test_batched_features_equal_one_example_at_a_time(model_and_template, pool_rows):
    model, template = model_and_template
    ids = [r["id"] for r in pool_rows]
    spec = fz.FeaturizerSpec(dtype="float32", keep_last_token=True)
    batched = fz.featurize(model, template, pool_rows, spec, ids)
    single = fz.featurize(model, template, pool_rows, fz.FeaturizerSpec(dtype="float32", keep_last_token=True,
                                                                         max_batch_size=1), ids)
    assert len(set(batched.n_tokens.tolist())) > 1  # padding really happened in the batched run
    for name in ("layer_mean", "first_token", "last_token", "rds_embedding"):
        np.testing.assert_allclose(getattr(batched, name), getattr(single, name), rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(batched.response_loss, single.response_loss, rtol=1e-4)


def test_features_match_a_direct_computation(model_and_template, pool_rows):
    model, template = model_and_template
    row = pool_rows[0]
    features = fz.featurize(model, template, [row], fz.FeaturizerSpec(dtype="float32"), [row["id"]])
    tokens = template.tokenize(row["instruction"], row["input"], row["output"], 512)
    ids = torch.tensor([tokens.input_ids])
    labels = ids.clone()
    labels[0, : tokens.response_start] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels, output_hidden_states=True)
    hidden = torch.stack(out.hidden_states[1:], 1)[0]  # [L, K, d]
    np.testing.assert_allclose(features.layer_mean[0], hidden.mean(1).numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(features.first_token[0], hidden[:, 0].numpy(), rtol=1e-4, atol=1e-3)
    k = hidden.shape[1]
    weights = torch.arange(1, k + 1, dtype=torch.float32) / (k * (k + 1) / 2)
    np.testing.assert_allclose(features.rds_embedding[0], (hidden[-1] * weights[:, None]).sum(0).numpy(),
                               rtol=1e-4, atol=1e-3)
    assert features.response_loss[0] == pytest.approx(out.loss.item(), rel=1e-5)
    assert features.n_response_tokens[0] == len(tokens.input_ids) - tokens.response_start
    assert features.layer_mean.shape == (1, 30, 576)


def test_prenorm_switch_changes_only_the_last_layer(model_and_template, pool_rows):
    model, template = model_and_template
    rows, ids = pool_rows[:2], [r["id"] for r in pool_rows[:2]]
    normed = fz.featurize(model, template, rows, fz.FeaturizerSpec(dtype="float32"), ids)
    prenorm = fz.featurize(model, template, rows, fz.FeaturizerSpec(dtype="float32", hidden_states=fz.PRENORM_LAST), ids)
    np.testing.assert_allclose(normed.layer_mean[:, :-1], prenorm.layer_mean[:, :-1], rtol=1e-5, atol=1e-4)
    assert np.abs(normed.layer_mean[:, -1] - prenorm.layer_mean[:, -1]).max() > 1.0


def test_long_examples_are_truncated_and_marked(model_and_template, pool_rows):
    model, template = model_and_template
    rows, ids = pool_rows[:3], [r["id"] for r in pool_rows[:3]]
    features = fz.featurize(model, template, rows, fz.FeaturizerSpec(dtype="float32", max_length=40), ids)
    assert features.n_tokens.max() <= 40
    assert features.truncated.all() and (features.full_length > 40).all()
    # The system prompt alone is ~30 tokens, so some response tokens remain and the loss is defined.
    assert np.isfinite(features.response_loss).all()


def test_store_round_trip_keeps_values(model_and_template, pool_rows, tmp_path):
    model, template = model_and_template
    ids = [r["id"] for r in pool_rows]
    features = fz.featurize(model, template, pool_rows, fz.FeaturizerSpec(dtype="float32"), ids)
    path = write_features(tmp_path / "s.parquet", ids, features, {"model_id": "m", "template_hash": "t",
                                                                  "featurizer": {}})
    stored = read_features([path], vectors=("layer_mean", "first_token", "rds_embedding"), scalars=("truncated",))
    assert stored.ids == ids
    # float16 storage: relative error below 1e-3 of each value's magnitude.
    np.testing.assert_allclose(stored.vectors["layer_mean"], features.layer_mean, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(stored.vectors["first_token"], features.first_token, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(stored.vectors["rds_embedding"], features.rds_embedding, rtol=1e-6)


def test_non_finite_activations_stop_the_run_naming_examples():
    features = fz.Features(
        layer_mean=np.array([[[1.0]], [[np.nan]]], np.float32), first_token=np.zeros((2, 1, 1), np.float32),
        last_token=None, rds_embedding=np.zeros((2, 1), np.float32), response_loss=np.zeros(2),
        n_tokens=np.ones(2, np.int32), n_response_tokens=np.ones(2, np.int32), full_length=np.ones(2, np.int32),
        truncated=np.zeros(2, bool))
    with pytest.raises(fz.NonFiniteFeatureError, match=r"non-finite layer_mean for 1 example\(s\): \['x2'\]"):
        fz.check_finite(features, ["x1", "x2"])


def test_batches_respect_the_token_budget():
    lengths = [10, 50, 30, 50, 5]
    batches = fz.plan_batches(lengths, batch_tokens=100, max_batch_size=8)
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in batches)
    assert batches[0] == [1, 3]  # longest first, ties by position


def test_stores_of_the_list_layout_are_read_and_migrated_with_the_same_values(tmp_path):
    import pyarrow as pa

    from nait_pipeline.lib.features.feature_store import PoolStore, migrate_store_file
    from nait_pipeline.lib.io.lake import read_metadata, write_parquet

    rng = np.random.default_rng(0)
    features = fz.Features(layer_mean=rng.normal(size=(3, 2, 4)).astype(np.float32),
                           first_token=rng.normal(size=(3, 2, 4)).astype(np.float32), last_token=None,
                           rds_embedding=rng.normal(size=(3, 4)).astype(np.float32),
                           response_loss=np.ones(3), n_tokens=np.full(3, 5, np.int32),
                           n_response_tokens=np.full(3, 2, np.int32), full_length=np.full(3, 5, np.int32),
                           truncated=np.zeros(3, bool))
    current = write_features(tmp_path / "new.parquet", ["a", "b", "c"], features, {"model_id": "m"})
    # The layout earlier versions wrote: float16 fixed-size lists.
    half = lambda x: pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(3, -1).astype(np.float16).ravel()), 8)  # noqa: E731
    table = pq.read_table(current).replace_schema_metadata(None)
    table = table.set_column(table.schema.get_field_index("layer_mean"), "layer_mean", half(features.layer_mean))
    table = table.set_column(table.schema.get_field_index("first_token"), "first_token", half(features.first_token))
    meta = {k: v for k, v in read_metadata(current).items() if k != "vector_dtypes"}
    old = write_parquet(table, tmp_path / "old.parquet", meta)
    expected = features.layer_mean.astype(np.float16).astype(np.float32)
    both = read_features([old, current], vectors=("layer_mean",)).vectors["layer_mean"]
    np.testing.assert_array_equal(both[:3], expected)
    np.testing.assert_array_equal(both[3:], expected)
    assert migrate_store_file(old) and not migrate_store_file(old)
    assert pa.types.is_fixed_size_binary(pq.read_schema(old).field("layer_mean").type)
    blocks = list(PoolStore([old]).blocks("first_token"))
    np.testing.assert_array_equal(blocks[0].astype(np.float32), features.first_token.astype(np.float16).astype(np.float32))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128)
    return LlamaForCausalLM(config).eval()


def reference_layer_features(model, token_rows: list[list[int]]) -> dict[str, np.ndarray]:
    """Every layer's token mean, first and last state from ``output_hidden_states``, one row at a time."""
    means, firsts, lasts = [], [], []
    for ids in token_rows:
        with torch.no_grad():
            stacked = torch.stack(model.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
                                  .hidden_states[1:], 1)[0]  # [L, T, d], the last layer after the final norm
        means.append(stacked.mean(1).numpy())
        firsts.append(stacked[:, 0].numpy())
        lasts.append(stacked[:, -1].numpy())
    return {"layer_mean": np.stack(means), "first_token": np.stack(firsts), "last_token": np.stack(lasts)}


class TokenRows:
    """A template stand-in that feeds fixed token ids (the hooks are what is under test, not the template)."""

    class tokenizer:  # noqa: N801 - mirrors the attribute the featurizer reads
        pad_token_id = 0

    def __init__(self, rows: list[list[int]]):
        self.rows = rows

    def tokenize_row(self, row, max_length):
        from nait_pipeline.lib.models.template import TokenizedExample

        ids = self.rows[row["index"]]
        return TokenizedExample(input_ids=ids, response_start=len(ids) // 2, full_length=len(ids), truncated=False)


def test_layer_hooks_give_what_output_hidden_states_gives():
    model = tiny_llama()
    rng = np.random.default_rng(0)
    token_rows = [rng.integers(1, 128, size=n).tolist() for n in (5, 9, 3, 12, 7)]
    rows, ids = [{"index": i} for i in range(len(token_rows))], [f"r{i}" for i in range(len(token_rows))]
    spec = fz.FeaturizerSpec(dtype="float32", keep_last_token=True, batch_tokens=64)
    features = fz.featurize(model, TokenRows(token_rows), rows, spec, ids)  # batched, padded
    expected = reference_layer_features(model, token_rows)
    for name, values in expected.items():
        np.testing.assert_allclose(getattr(features, name), values, rtol=1e-5, atol=1e-6, err_msg=name)
    assert features.stats["device"] == "cpu" and features.stats["batch_tokens"] == 64
    # prenorm_last: the last layer's own states, which the final norm maps, token by token, onto HF's entry.
    prenorm = fz.featurize(model, TokenRows(token_rows), rows,
                           fz.FeaturizerSpec(dtype="float32", keep_last_token=True, hidden_states=fz.PRENORM_LAST),
                           ids)
    np.testing.assert_array_equal(prenorm.layer_mean[:, :-1], features.layer_mean[:, :-1])
    with torch.no_grad():
        normed = model.model.norm(torch.from_numpy(prenorm.last_token[:, -1])).numpy()
    np.testing.assert_allclose(normed, expected["last_token"][:, -1], rtol=1e-5, atol=1e-6)
    assert np.abs(prenorm.last_token[:, -1] - expected["last_token"][:, -1]).max() > 1e-2


def test_a_layer_subset_is_reduced_from_the_hooked_layers_alone():
    from nait_pipeline.lib.features.reduction import StoreReduction

    model = tiny_llama()
    token_rows = [[5, 6, 7, 8], [9, 10, 11]]
    rows, ids = [{"index": 0}, {"index": 1}], ["a", "b"]
    full = fz.featurize(model, TokenRows(token_rows), rows, fz.FeaturizerSpec(dtype="float32"), ids)
    subset = fz.featurize(model, TokenRows(token_rows), rows,
                          fz.FeaturizerSpec(dtype="float32", reduction=StoreReduction(layers=(2, 4))), ids)
    np.testing.assert_array_equal(subset.layer_mean, full.layer_mean[:, [1, 3]])
    assert subset.layers == [2, 4]


def test_the_token_budget_is_sized_from_the_device():
    config = tiny_llama().config
    assert fz.resolve_batch_tokens(4096, config, "cuda", "bfloat16") == 4096  # given: kept
    assert fz.resolve_batch_tokens(0, config, "cpu", "float32") == fz.CPU_BATCH_TOKENS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the GPU path is compared with the CPU path")
def test_the_gpu_path_matches_the_cpu_path():
    model = tiny_llama()
    token_rows = [[5, 6, 7, 8, 9], [9, 10, 11]]
    rows, ids = [{"index": 0}, {"index": 1}], ["a", "b"]
    spec = fz.FeaturizerSpec(dtype="float32", keep_last_token=True, batch_tokens=0)
    cpu = fz.featurize(model, TokenRows(token_rows), rows, spec, ids)
    gpu = fz.featurize(model.to("cuda"), TokenRows(token_rows), rows, spec, ids)
    assert gpu.stats["device"] == "cuda" and gpu.stats["batch_tokens"] >= 512
    for name in ("layer_mean", "first_token", "last_token", "rds_embedding"):
        np.testing.assert_allclose(getattr(gpu, name), getattr(cpu, name), rtol=1e-4, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(gpu.response_loss, cpu.response_loss, rtol=1e-4)


def test_a_coded_store_setting_codes_pool_shards_and_keeps_targets_at_float_width(tmp_path):
    """``[forward_store] bits``: the featurizer's pool shard holds codes (and reads back as the features it
    computed: five rows have at most 16 distinct values per dimension), the target set the float width; both
    record the same reduction, so they are compared."""
    from nait_pipeline.lib.features import forward
    from nait_pipeline.lib.features.feature_store import read_features
    from nait_pipeline.lib.features.reduction import StoreReduction
    from nait_pipeline.lib.io.lake import read_metadata
    from nait_pipeline.lib.models.model_io import ModelInfo

    model = tiny_llama()
    rng = np.random.default_rng(1)
    token_rows = [rng.integers(1, 128, size=n).tolist() for n in (5, 9, 3, 12, 7)]
    rows, ids = [{"index": i} for i in range(5)], [f"r{i}" for i in range(5)]
    info = ModelInfo(model_id="tiny", path="unused", architecture="LlamaForCausalLM", num_layers=4, hidden_size=32,
                     vocab_size=128, template_hash="t", has_chat_template=False)
    reduction = StoreReduction(layers=(2, 4), bits=4)
    pool_spec = fz.FeaturizerSpec(dtype="float32", reduction=reduction)
    target_spec = fz.FeaturizerSpec(dtype="float32", reduction=reduction, keep_last_token=True)
    load = lambda: (model, TokenRows(token_rows))  # noqa: E731
    pool = forward.featurize_into(tmp_path / "pool.parquet", info, rows, ids, pool_spec, "in-1", load)
    target = forward.featurize_into(tmp_path / "target.parquet", info, rows, ids, target_spec, "in-1", load)
    assert read_metadata(pool.path)["vector_dtypes"] == {"layer_mean": "q4", "rds_embedding": "q8"}
    assert read_metadata(target.path)["vector_dtypes"]["layer_mean"] == "float16"
    assert read_metadata(pool.path)["reduction"] == read_metadata(target.path)["reduction"]
    assert read_metadata(pool.path)["reduction"]["bits"] == 4
    computed = fz.featurize(model, TokenRows(token_rows), rows, pool_spec, ids)
    stored = read_features([pool.path], vectors=("layer_mean",))
    np.testing.assert_allclose(stored.vectors["layer_mean"], computed.layer_mean, rtol=2e-3, atol=2e-3)
    again = forward.featurize_into(tmp_path / "pool.parquet", info, rows, ids, pool_spec, "in-1", load)
    assert again.reused and again.version == pool.version  # resumed by store identity, bits included
    float_width = forward.featurize_into(tmp_path / "pool.parquet", info, rows, ids,
                                         fz.FeaturizerSpec(dtype="float32", reduction=StoreReduction(layers=(2, 4))),
                                         "in-1", load)
    assert not float_width.reused and float_width.version != pool.version  # another setting, another store
    assert read_metadata(float_width.path)["vector_dtypes"]["layer_mean"] == "float16"
