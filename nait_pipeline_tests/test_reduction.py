"""Compact forward stores: layer subsets, seeded projections and float widths, exact where they must be."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from nait_pipeline.lib.features import featurize as fz
from nait_pipeline.lib.features.feature_store import read_features, write_features
from nait_pipeline.lib.features.reduction import (
    Reducer,
    ReductionMismatchError,
    StoreReduction,
    check_same_reduction,
    resolve,
)
from nait_pipeline.lib.io.lake import read_metadata
from nait_pipeline.lib.io.pool_view import PoolView
from nait_pipeline.lib.methods.nait import nait_c_math as nc
from nait_pipeline.lib.methods.nait.nait_c_method import reduced_prefix
from nait_pipeline.lib.models import model_io
from nait_pipeline.lib.models.template import ChatTemplate


def test_layer_settings_parse_by_hand():
    assert StoreReduction.parse("all", 0).layers == ()
    assert StoreReduction.parse("every:4", 0, num_layers=10).layers == (2, 6, 10)  # the last layer always kept
    assert StoreReduction.parse("last:3", 0, num_layers=10).layers == (8, 9, 10)
    assert StoreReduction.parse("1, 5,9", 0).layers == (1, 5, 9)
    with pytest.raises(ValueError, match="layer 12 asked for, the model has 10"):
        StoreReduction.parse("4,12", 0, num_layers=10)
    with pytest.raises(ValueError, match="'every:K', 'last:K' or a comma list"):
        StoreReduction.parse("most", 0)
    with pytest.raises(ValueError, match="float_width"):
        StoreReduction(float_width="int8")


def test_defaults_by_model_width():
    assert resolve("auto", -1, 0, "auto", 30, 576).is_full  # the embedded model: full width
    wide = resolve("auto", -1, 0, "auto", 32, 4096)
    # Measured: projections lose NAIT-C; every 3rd layer at 4 bits keeps all three methods at >= 0.95.
    assert wide.layers == (2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32) and wide.dim == 0 and wide.bits == 4
    # 11 layers of full-width token means (no per-row first-token state) and the RDS+ embedding.
    assert wide.pool_values_per_row(32, 4096) == 11 * 4096 + 4096
    assert resolve("auto", -1, 0, "auto", 32, 4096, bits=0).bits == 0  # codes are a default, not a must
    with pytest.raises(ValueError, match="bits must be 0"):
        StoreReduction(bits=3)
    assert resolve("auto", 256, 0, "auto", 32, 4096).dim == 256  # a projection is an explicit choice
    assert resolve("all", 0, 0, "float32", 32, 4096, 0) == StoreReduction(float_width="float32")
    assert StoreReduction().identity() is None  # full-width stores keep the identity they always had


def test_projection_is_seeded_linear_and_masks_before_projecting():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4, 64)).astype(np.float32)
    masked = np.zeros((4, 64), bool)
    masked[:, 3] = True
    reducer = Reducer(StoreReduction(layers=(2, 4), dim=16, seed=7), 4, 64, masked)
    again = Reducer(StoreReduction(layers=(2, 4), dim=16, seed=7), 4, 64, masked)
    np.testing.assert_array_equal(reducer.projection, again.projection)
    assert set(np.unique(np.abs(reducer.projection))) == {np.float32(1 / 4)}
    out = reducer.vectors(x)
    assert out.shape == (5, 2, 16)
    by_hand = x[:, [1, 3]].copy()
    by_hand[..., 3] = 0.0  # a massive dimension never reaches the projection
    np.testing.assert_allclose(out, by_hand @ reducer.projection, rtol=1e-5, atol=1e-5)
    x[..., 3] += 1e6
    np.testing.assert_allclose(reducer.vectors(x), out, rtol=1e-5, atol=1e-5)
    # Linear: the reduction of a combination is the combination of the reductions.
    np.testing.assert_allclose(reducer.vectors(2 * x[:2] - x[2:4]), 2 * out[:2] - out[2:4], rtol=1e-4, atol=1e-3)
    # The store records it, and the record rebuilds the same reducer.
    rebuilt = Reducer.from_metadata(reducer.metadata(), num_layers=4)
    np.testing.assert_array_equal(rebuilt.vectors(x), reducer.vectors(x))
    assert reducer.metadata()["masked_dims"] == {"2": [3], "4": [3]}


def test_prefix_removal_commutes_with_the_reduction():
    """NAIT-C's cleaning (K m - S) / (K - P) on reduced means equals the reduction of the full-width
    cleaning: exact, because the prefix sums are reduced by the store's own reducer."""
    rng = np.random.default_rng(1)
    layers, width, n = 3, 32, 6
    means = rng.standard_normal((n, layers, width)).astype(np.float32)
    n_tokens = rng.integers(10, 50, n)
    prefix = nc.PrefixStates(length=4, sums=rng.standard_normal((layers, width)).astype(np.float32) * 4,
                             first=rng.standard_normal((layers, width)).astype(np.float32))
    reducer = Reducer(StoreReduction(layers=(1, 3), dim=8, seed=3), layers, width)
    small_prefix = reduced_prefix(prefix, reducer.metadata())
    cleaned_small = nc.clean_means(reducer.vectors(means), n_tokens, small_prefix)
    np.testing.assert_allclose(cleaned_small, reducer.vectors(nc.clean_means(means, n_tokens, prefix)),
                               rtol=1e-4, atol=1e-4)


def test_stores_reduced_differently_are_refused_naming_both():
    a = Reducer(StoreReduction(dim=8, seed=0), 2, 16).metadata()
    b = Reducer(StoreReduction(dim=8, seed=1), 2, 16).metadata()
    with pytest.raises(ReductionMismatchError, match=r"pool is stored with layers \[1, 2\], dim 8 \(seed 0\).*"
                                                     r"targets with layers \[1, 2\], dim 8 \(seed 1\)"):
        check_same_reduction(a, b, "pool", "targets")
    with pytest.raises(ReductionMismatchError, match="pool is stored with full width"):
        check_same_reduction(None, b, "pool", "targets")
    check_same_reduction(a, dict(a), "pool", "targets")


@pytest.fixture(scope="module")
def model_and_template(model_dir):
    return model_io.load_causal_lm(model_dir), ChatTemplate(model_io.load_tokenizer(model_dir))


def test_a_compact_store_is_the_full_store_reduced(model_and_template, shared_data, tmp_path):
    """On the real model: featurizing with a reduction gives the full-width features reduced offline by
    the recorded reducer; the pool store drops the first-token state; the file is smaller."""
    model, template = model_and_template
    rows = pq.read_table(shared_data / "pools" / "alpaca_cleaned.parquet").slice(0, 8).to_pylist()
    ids = [r["id"] for r in rows]
    full = fz.featurize(model, template, rows, fz.FeaturizerSpec(dtype="float32"), ids)
    reduction = StoreReduction(layers=(10, 20, 30), dim=64, seed=0, float_width="float16")
    compact = fz.featurize(model, template, rows, fz.FeaturizerSpec(dtype="float32", reduction=reduction), ids)
    assert compact.first_token is None and compact.layers == [10, 20, 30]
    assert compact.layer_mean.shape == (8, 3, 64) and compact.rds_embedding.shape == (8, 64)
    # The embedded model's first token carries massive activations: they are masked, and recorded.
    assert compact.reduction["masked_dims"]
    reducer = Reducer.from_metadata(compact.reduction, num_layers=30)
    np.testing.assert_allclose(compact.layer_mean, reducer.vectors(full.layer_mean), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(compact.rds_embedding, reducer.embedding(full.rds_embedding), rtol=1e-3, atol=1e-3)
    targets = fz.featurize(model, template, rows, fz.FeaturizerSpec(dtype="float32", reduction=reduction,
                                                                    keep_last_token=True), ids)
    assert targets.first_token.shape == (8, 3, 64)  # targets keep it for NAIT's drift
    assert targets.reduction == compact.reduction  # same model, same mask: comparable stores
    big = write_features(tmp_path / "full.parquet", ids, full, {"model_id": "m"})
    small = write_features(tmp_path / "compact.parquet", ids, compact, {"model_id": "m"})
    assert small.stat().st_size * 20 < big.stat().st_size
    meta = read_metadata(small)
    assert meta["layers"] == [10, 20, 30] and meta["reduction"]["dim"] == 64 and meta["vector_dtypes"] == {
        "layer_mean": "float16"}
    stored = read_features([small], vectors=("layer_mean",))
    np.testing.assert_allclose(stored.vectors["layer_mean"], compact.layer_mean, rtol=2e-3, atol=2e-3)
    with pytest.raises(ReductionMismatchError):
        read_features([small, big])
    # As 4-bit codes: 8 rows have at most 8 distinct values per dimension, so a shard's own codebook
    # reconstructs every value (to float16), outlier dimensions included.
    coded = write_features(tmp_path / "coded.parquet", ids, compact, {"model_id": "m"}, quantize_bits=4)
    assert read_metadata(coded)["vector_dtypes"] == {"layer_mean": "q4", "rds_embedding": "q8"}
    decoded = read_features([coded], vectors=("layer_mean", "rds_embedding"))
    np.testing.assert_allclose(decoded.vectors["layer_mean"], compact.layer_mean, rtol=1e-3, atol=1e-3)
    half_step = np.ptp(compact.rds_embedding, axis=0) / 255 / 2  # the embedding: an even 8-bit grid
    assert np.all(np.abs(decoded.vectors["rds_embedding"] - compact.rds_embedding) <= half_step * 1.001 + 1e-6)


def _compact_lake(layout, reduction: StoreReduction, layers: int = 3, width: int = 8, targets: bool = True) -> dict:
    """Rewrite a synthetic lake's forward stores as a compact store of ``reduction`` would hold them (the
    template prefix stays full width, as the asset writes it)."""
    from nait_pipeline.lib.features.featurize import Features
    from nait_pipeline.lib.io.pool_view import PoolView
    from nait_pipeline_tests import synthetic_lake

    masked = np.zeros((layers, width), bool)
    masked[:, 0] = True  # the synthetic prefix's massive dimension
    reducer = Reducer(reduction, layers, width, masked)
    paths = [(layout.pool_activations(s), False) for s in PoolView.open(layout).shards]
    paths += [(layout.target_activations(c), True) for c in synthetic_lake.CAPABILITIES] if targets else []
    for path, is_target in paths:
        names = ("layer_mean", "first_token", "last_token") if is_target else ("layer_mean",)
        stored = read_features([path], vectors=(*names, "rds_embedding"),
                               scalars=("n_tokens", "n_response_tokens", "full_length", "truncated", "response_loss"))
        vectors = {name: reducer.vectors(stored.vectors[name]) for name in names}
        features = Features(first_token=vectors.get("first_token"), last_token=vectors.get("last_token"),
                            layer_mean=vectors["layer_mean"], rds_embedding=reducer.embedding(stored.vectors["rds_embedding"]),
                            **stored.scalars, layers=reducer.layers, reduction=reducer.metadata())
        meta = {k: v for k, v in stored.metadata.items() if k not in ("num_layers", "hidden_size", "layers", "vector_dtypes")}
        write_features(path, stored.ids, features, meta, quantize_bits=0 if is_target else reduction.bits)
    return reducer.metadata()


def test_forward_scorers_run_on_a_compact_store_and_refuse_a_mixed_one(tmp_path):
    from nait_pipeline.lib.methods import scorers
    from nait_pipeline.lib.methods.run import score_capability
    from nait_pipeline_tests import synthetic_lake

    import pyarrow as pa

    from nait_pipeline.lib.io.lake import write_parquet
    from nait_pipeline.lib.methods.nait import nait_math
    from nait_pipeline.lib.methods.nait.nait_method import target_drifts

    layout = synthetic_lake.build(tmp_path / "lake", n_pool=40, layers=3, width=8)
    drifts, store_meta = target_drifts(layout, "math", "R2")  # directions fitted before the store was compacted
    fitted = nait_math.fit_directions(drifts, capability="math")
    write_parquet(pa.table({"capability": ["math"] * 3, "layer": [1, 2, 3], "direction": list(fitted.vectors)}),
                  layout.directions("math"), {"directions_version": "d0", "model_id": store_meta["model_id"]})
    reduction = StoreReduction(layers=(2, 3), dim=6, seed=0)
    _compact_lake(layout, reduction)
    for name in ("nait_c", "rds"):
        scorer = scorers()[name]
        run = score_capability(layout, scorer, "math", scorer.params())
        assert len(run.table) == 40 and np.isfinite(run.table.column("score").to_numpy()).all()
        again = score_capability(layout, scorer, "math", scorer.params())
        assert again.table.column("score").to_pylist() == run.table.column("score").to_pylist()
    # NAIT's synthetic directions were fitted at full width: the scorer names both settings.
    with pytest.raises(ReductionMismatchError, match=r"pool's forward store is stored with layers \[2, 3\], dim 6.*"
                                                     r"math target store with full width"):
        score_capability(layout, scorers()["nait"], "math", scorers()["nait"].params())

    mixed = synthetic_lake.build(tmp_path / "mixed", n_pool=40, layers=3, width=8)
    _compact_lake(mixed, reduction, targets=False)
    with pytest.raises(ReductionMismatchError, match="math target store with full width"):
        score_capability(mixed, scorers()["rds"], "math", scorers()["rds"].params())


def test_the_store_setting_comes_from_the_settings_file(tmp_path, monkeypatch):
    """One setting for the pool and every target set: the settings file, resolved per model width."""
    from nait_pipeline.defs.resources import lake_resource_from_settings
    from nait_pipeline.lib.io.settings import Settings
    from nait_pipeline_tests import synthetic_lake

    settings_file = tmp_path / "nait_settings.toml"
    monkeypatch.setenv("NAIT_SETTINGS", str(settings_file))
    settings_file.write_text("")
    narrow, wide = synthetic_lake.model_info(30, 576), synthetic_lake.model_info(32, 4096)
    assert lake_resource_from_settings(Settings.from_env()).store_reduction(narrow).is_full
    assert lake_resource_from_settings(Settings.from_env()).store_reduction(wide).layers[-1] == 32
    settings_file.write_text('[forward_store]\nlayers = "last:2"\ndim = 64\nseed = 3\nfloat_width = "float32"\n')
    chosen = lake_resource_from_settings(Settings.from_env()).store_reduction(narrow)
    assert chosen == StoreReduction(layers=(29, 30), dim=64, seed=3, float_width="float32")
    settings_file.write_text('[forward_store]\nlayers = "every:3"\nbits = 4\n')
    chosen = lake_resource_from_settings(Settings.from_env()).store_reduction(narrow)
    assert chosen == StoreReduction(layers=tuple(range(3, 31, 3)), bits=4)
    assert chosen.identity()["bits"] == 4 and "bits" not in StoreReduction(layers=(30,)).identity()
    settings_file.write_text("[forward_store]\nwidth = 64\n")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['width'\]"):
        Settings.from_env()


def test_scorers_read_a_quantized_store_and_sql_sees_no_codes_as_floats(tmp_path):
    """A store whose pool shards hold 4-bit codes: NAIT, NAIT-C and RDS+ score it deterministically and
    keep the full store's top rows; the SQL view shows the codes as BLOBs and the embedding as NULL."""
    from nait_pipeline.lib.io import sql
    from nait_pipeline.lib.io.contract import ensure_contract_tables
    from nait_pipeline.lib.methods import scorers
    from nait_pipeline.lib.methods.nait.nait_method import write_directions
    from nait_pipeline.lib.methods.run import score_capability
    from nait_pipeline_tests import synthetic_lake

    def scores(layout) -> dict:
        write_directions(layout, "math")
        return {name: score_capability(layout, scorers()[name], "math", scorers()[name].params())
                .table.column("score").to_numpy() for name in ("nait", "nait_c", "rds")}

    full = synthetic_lake.build(tmp_path / "full", n_pool=300, shard_size=150, layers=3, width=16)
    coded = synthetic_lake.build(tmp_path / "coded", n_pool=300, shard_size=150, layers=3, width=16)
    reference = scores(full)
    _compact_lake(coded, StoreReduction(layers=(1, 2, 3), bits=4), width=16)
    meta = read_metadata(coded.pool_activations(PoolView.open(coded).shards[0]))
    assert meta["vector_dtypes"] == {"layer_mean": "q4", "rds_embedding": "q8"} and meta["reduction"]["bits"] == 4
    first, again = scores(coded), scores(coded)
    for name, values in first.items():
        assert np.isfinite(values).all() and values.tolist() == again[name].tolist()
        top = lambda s: set(np.argsort(-s, kind="stable")[:30].tolist())  # noqa: E731
        assert len(top(values) & top(reference[name])) >= 24, name  # 4-bit codes keep most of the top 10 %
    ensure_contract_tables(coded.root)
    db = tmp_path / "warehouse.duckdb"
    sql.build_warehouse(db, coded.root)
    with sql.connect_read_only(db) as con:
        row = con.execute("SELECT count(*), count(rds_embedding), typeof(any_value(layer_mean_codes)) "
                          "FROM pool_activations").fetchone()
    assert row == (300, 0, "BLOB")
