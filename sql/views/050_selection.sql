-- Per-example scores of every method and capability (one file per method and capability).
CREATE OR REPLACE VIEW scores AS
SELECT * FROM read_parquet({{lake}} || '/scores/*.parquet', union_by_name = true);

-- Selected subsets: one row per selected example, rank 1 = best.
CREATE OR REPLACE VIEW subsets AS
SELECT * FROM read_parquet({{lake}} || '/subsets/*.parquet', union_by_name = true);

-- Where every subset came from: pool version, model, template, method and parameters.
CREATE OR REPLACE VIEW subset_lineage AS
SELECT * FROM read_parquet({{lake}} || '/subset_lineage/*.parquet', union_by_name = true);

-- What the pipeline holds now: per method, capability and slot (random seed), the subset version the
-- method's last selection wrote.
CREATE OR REPLACE VIEW current_subsets AS
SELECT * FROM read_parquet({{lake}} || '/current_subsets/*.parquet', union_by_name = true);

-- Row-level changes between a slot's previous and current subset version (the subset_diffs asset).
CREATE OR REPLACE VIEW subset_diffs AS
SELECT * FROM read_parquet({{lake}} || '/subset_diffs/*.parquet', union_by_name = true);

-- Offline diagnostics of every subset version: length coupling, overlap with longest-k and random,
-- source composition and enrichment.
CREATE OR REPLACE VIEW subset_diagnostics AS
SELECT * FROM read_parquet({{lake}} || '/subset_diagnostics/*.parquet', union_by_name = true);

-- Why a row is in a subset, where the method records it: the capability whose turn chose it in
-- NAIT-C's all-capability round-robin.
CREATE OR REPLACE VIEW subset_explanations AS
SELECT * FROM read_parquet({{lake}} || '/subset_explanations/*.parquet', union_by_name = true);
