-- Forward features of pool examples (one file per pool shard) and of target sets (one per capability).
-- Vectors are flattened [layer, dim] lists (layer-major); rds_embedding is the last layer's
-- position-weighted mean. response_loss is NULL where truncation left no response token.
CREATE OR REPLACE VIEW pool_activations AS
SELECT regexp_extract(filename, '([^/]+)\.parquet$', 1) AS shard, * EXCLUDE (filename)
FROM read_parquet({{lake}} || '/features/pool_activations/*.parquet', union_by_name = true, filename = true)
WHERE NOT ends_with(filename, '/_schema.parquet');

CREATE OR REPLACE VIEW target_activations AS
SELECT regexp_extract(filename, '([^/]+)\.parquet$', 1) AS capability, * EXCLUDE (filename)
FROM read_parquet({{lake}} || '/features/target_activations/*.parquet', union_by_name = true, filename = true)
WHERE NOT ends_with(filename, '/_schema.parquet');

-- NAIT capability directions: one unit vector per capability and decoder layer.
CREATE OR REPLACE VIEW capability_directions AS
SELECT * FROM read_parquet({{lake}} || '/directions/*.parquet', union_by_name = true);
