"""Scalar quantization of a compact store's pool vectors: hand-computed codebooks, packing, round trips."""

from __future__ import annotations

import numpy as np
import pytest

from nait_pipeline.lib.features import quantize as q


def test_lloyd_levels_by_hand():
    # One bit, one dimension [0, 0, 1, 1, 10, 10]: equal-mass start {0, 0, 1} / {1, 10, 10} -> levels 1/3, 7;
    # threshold 11/3 moves the second 1 down -> 0.5, 10; threshold 5.25 keeps them.
    values = np.array([[0.0], [0.0], [1.0], [1.0], [10.0], [10.0]], np.float32)
    np.testing.assert_allclose(q.fit_levels(values, 1), [[0.5, 10.0]])
    np.testing.assert_array_equal(q.encode(values, q.fit_levels(values, 1)).ravel(), [0, 0, 0, 0, 1, 1])


def test_a_dimension_with_few_distinct_values_is_exact():
    values = np.array([[3.0, -1.0], [3.0, 2.0], [-5.0, 2.0], [7.0, -1.0]], np.float32)  # <= 4 values per dim
    packed, levels = q.quantize(values, 2)
    decoded = q.decode(packed, q.byte_table(levels, 2, np.float32), 2)
    np.testing.assert_array_equal(decoded, values)


def test_packing_puts_dimension_zero_in_the_low_bits():
    codes = np.array([[1, 2, 3, 0, 2]], np.uint8)  # two bits: 1 | 2 << 2 | 3 << 4 | 0 << 6 = 57, then 2
    np.testing.assert_array_equal(q.pack(codes, 2), [[57, 2]])
    np.testing.assert_array_equal(q.pack(np.array([[5, 12]], np.uint8), 4), [[5 | 12 << 4]])
    levels = np.array([[0.0, 1, 2, 3]] * 5, np.float32) * np.arange(1, 6, dtype=np.float32)[:, None]
    decoded = q.decode(q.pack(codes, 2), q.byte_table(levels, 2, np.float32), 5)
    np.testing.assert_array_equal(decoded, [[1 * 1, 2 * 2, 3 * 3, 0 * 4, 2 * 5]])


@pytest.mark.parametrize("bits,lloyd_max", [(1, 0.3634), (2, 0.1175), (4, 0.00950)])
def test_gaussian_error_is_near_the_lloyd_max_optimum(bits, lloyd_max):
    """Per-dimension codebooks on Gaussian columns of very different scales: the error relative to each
    column's variance is close to the optimal scalar quantizer's (Max 1960), whatever the scale."""
    rng = np.random.default_rng(0)
    scales = np.geomspace(1e-3, 1e3, 40).astype(np.float32)
    values = rng.standard_normal((20_000, 40)).astype(np.float32) * scales + 5 * scales
    packed, levels = q.quantize(values, bits)
    decoded = q.decode(packed, q.byte_table(levels, bits, np.float32), 40)
    relative = ((decoded - values) ** 2).mean(0) / values.var(0)
    assert packed.shape == (20_000, 40 * bits // 8)
    assert np.all(relative < lloyd_max * 1.5) and np.all(relative > lloyd_max * 0.9)


def test_eight_bits_is_an_even_grid_recorded_by_its_ends():
    rng = np.random.default_rng(2)
    values = rng.standard_normal((3000, 5)).astype(np.float32) * [1, 10, 100, 0.1, 1]
    levels = q.fit_levels(values, 8)
    np.testing.assert_allclose(levels[:, 0], values.min(0))
    np.testing.assert_allclose(levels[:, -1], values.max(0), rtol=1e-6)
    np.testing.assert_allclose(np.diff(levels, axis=1), np.diff(levels, axis=1)[:, :1].repeat(255, 1), rtol=1e-3)
    restored, bits = q.levels_from_metadata(q.levels_to_metadata(levels, 8))
    np.testing.assert_allclose(restored, levels, rtol=1e-6)
    assert bits == 8
    decoded = q.decode(q.pack(q.encode(values, levels), 8), q.byte_table(levels, 8, np.float32), 5)
    step = (values.max(0) - values.min(0)) / 255
    assert np.all(np.abs(decoded - values) <= step / 2 + 1e-6)


def test_a_layers_outlier_dimensions_are_chosen_and_capped():
    rng = np.random.default_rng(3)
    values = rng.standard_normal((500, 2, 200)).astype(np.float32)
    values[:, 0, 7] *= 50   # layer 1: one dimension 50x wider
    values[:, 1, [3, 9, 150]] *= [20, 40, 30]  # layer 2: three, but 1 % of 200 dims caps it at two
    chosen = q.outlier_dims(values.reshape(500, -1), groups=2)
    assert chosen.tolist() == [7, 200 + 9, 200 + 150]
    with pytest.raises(q.QuantizationError, match="do not split into 3 layers"):
        q.outlier_dims(values.reshape(500, -1), groups=3)


def test_bad_values_and_codebooks_are_refused():
    with pytest.raises(q.QuantizationError, match="NaN or inf"):
        q.fit_levels(np.array([[1.0], [np.nan]], np.float32), 2)
    with pytest.raises(q.QuantizationError, match="bits must be one of"):
        q.fit_levels(np.ones((4, 1), np.float32), 3)
    levels = q.fit_levels(np.arange(8, dtype=np.float32).reshape(4, 2), 2)
    with pytest.raises(q.QuantizationError, match="do not match a codebook of 2 dims"):
        q.encode(np.ones((2, 3), np.float32), levels)
    meta = q.levels_to_metadata(levels, 2)
    restored, bits = q.levels_from_metadata(meta)
    np.testing.assert_array_equal(restored, levels.astype(np.float16))  # recorded in float16
    assert bits == 2
    with pytest.raises(q.QuantizationError, match="does not hold 3 dims"):
        q.levels_from_metadata({**meta, "dims": 3})


def test_a_quantized_pool_shard_reads_back_decoded(tmp_path):
    """The store writes a pool shard's token means and RDS+ embedding as codes with the file's codebook,
    and every reader (whole or shard by shard) gets the decoded values; the file is ~5x smaller (2 bits for
    the means, 8 for the embedding, against 16 and 32)."""
    from nait_pipeline.lib.features.feature_store import PoolStore, read_features, write_features
    from nait_pipeline.lib.features.featurize import Features
    from nait_pipeline.lib.io.lake import read_metadata

    rng = np.random.default_rng(1)
    n, layers, width = 600, 3, 64
    means = rng.standard_normal((n, layers, width)).astype(np.float32) * rng.uniform(0.1, 3, (layers, width))
    means[:, 1, 5] *= 100  # an attention-sink-like dimension: kept exact beside the codes
    embedding = rng.standard_normal((n, width)).astype(np.float32)
    scalars = dict(n_tokens=np.full(n, 20), n_response_tokens=np.full(n, 10), full_length=np.full(n, 20),
                   truncated=np.zeros(n, bool), response_loss=np.ones(n))
    features = Features(layer_mean=means, first_token=None, last_token=None, rds_embedding=embedding, **scalars,
                        layers=[1, 2, 3], reduction={"bits": 2})
    ids = [f"r{i:04d}" for i in range(n)]
    plain = write_features(tmp_path / "plain.parquet", ids, features, {"model_id": "m"})
    packed = write_features(tmp_path / "q2.parquet", ids, features, {"model_id": "m"}, quantize_bits=2)
    assert packed.stat().st_size * 4.5 < plain.stat().st_size
    meta = read_metadata(packed)
    assert meta["vector_dtypes"] == {"layer_mean": "q2", "rds_embedding": "q8"}
    assert meta["codebooks"]["layer_mean"]["dims"] == layers * width
    whole = read_features([packed], vectors=("layer_mean", "rds_embedding"))
    assert whole.vectors["layer_mean"].shape == (n, layers, width)
    relative = ((whole.vectors["layer_mean"] - means) ** 2).mean(0) / means.var(0)
    assert relative.max() < 0.2  # 2 bits: ~0.12 of each dimension's variance
    assert meta["codebooks"]["layer_mean"]["exact_dims"] == [width + 5]
    np.testing.assert_array_equal(whole.vectors["layer_mean"][:, 1, 5], means[:, 1, 5].astype(np.float16))
    store = PoolStore([packed])
    np.testing.assert_array_equal(np.concatenate(list(store.blocks("layer_mean"))).reshape(n, layers, width),
                                  whole.vectors["layer_mean"].astype(np.float16))
    np.testing.assert_allclose(store.vector("rds_embedding"), whole.vectors["rds_embedding"])
    # Same rows, same codes: a shard written again is the same file content.
    again = write_features(tmp_path / "q2b.parquet", ids, features, {"model_id": "m"}, quantize_bits=2)
    assert read_metadata(again)["codebooks"] == meta["codebooks"]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_dot_products_from_the_codes_equal_decoding_first(bits):
    """A coded block's per-layer dot products (byte tables, no decoded array) equal decode-then-multiply,
    outlier dimensions included; NAIT's projections take this path for a quantized shard."""
    from nait_pipeline.lib.methods.nait import nait_math

    rng = np.random.default_rng(bits)
    n, layers, width = 300, 3, 24
    values = rng.standard_normal((n, layers, width)).astype(np.float32)
    values[:, 2, 5] *= 80  # an outlier dimension, kept exact
    flat = values.reshape(n, -1)
    packed, levels = q.quantize(flat, bits)
    exact = q.outlier_dims(flat, layers)
    block = q.CodedBlock(packed=packed, levels=levels, bits=bits, exact_dims=exact.tolist(),
                         exact=flat[:, exact].astype(np.float16), row_shape=(layers, width))
    assert exact.tolist() == [2 * width + 5]
    directions = rng.standard_normal((layers, width)).astype(np.float32)
    decoded = block.decode().astype(np.float64)
    np.testing.assert_allclose(block.layer_dots(directions), np.einsum("nld,ld->nl", decoded, directions),
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(nait_math.layer_projections(block, directions),
                               nait_math.layer_projections(block.decode(), directions), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(q.unpack_codes(packed, [0, 7, 70], bits), q.encode(flat, levels)[:, [0, 7, 70]])
    several = rng.standard_normal((4, layers, width)).astype(np.float32)  # NAIT-C's folds: [F, L, d]
    np.testing.assert_allclose(block.layer_dots(several), np.einsum("nld,fld->nfl", decoded, several),
                               rtol=1e-5, atol=1e-4)
