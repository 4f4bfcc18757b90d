-- Models fine-tuned on a subset version, and their per-capability evaluation on the test splits.
CREATE OR REPLACE VIEW finetune_runs AS
SELECT * FROM read_parquet({{lake}} || '/finetune_runs/*.parquet', union_by_name = true);

CREATE OR REPLACE VIEW evaluations AS
SELECT * FROM read_parquet({{lake}} || '/evaluations/*.parquet', union_by_name = true);

-- One row per (subset version, capability, item, metric), forward passes only; not-computable items
-- keep their reason. Every per-item aggregate in `evaluations` is a mean over these rows.
CREATE OR REPLACE VIEW evaluation_items AS
SELECT * FROM read_parquet({{lake}} || '/evaluation_items/*.parquet', union_by_name = true);

-- Method vs random (mean ± std over seeds) vs full pool, per capability and metric, with selection cost.
CREATE OR REPLACE VIEW comparisons AS
SELECT * FROM read_parquet({{lake}} || '/comparisons/*.parquet', union_by_name = true);

-- Per method, reference (random, full), capability and per-item metric: Δ, its SE from runs and items,
-- one-sided 95 % bounds, p and the two-way bootstrap; no interval (with the reason) below 2 runs a side.
CREATE OR REPLACE VIEW comparison_intervals AS
SELECT * FROM read_parquet({{lake}} || '/comparison_intervals/*.parquet', union_by_name = true);
