-- Pool rows as ingested by the it_pool asset. Every row read from a pool file is in exactly one of:
-- pool_examples (kept), pool_duplicates, pool_sampled_out, pool_quarantine.
CREATE OR REPLACE VIEW pool_rows AS
SELECT * FROM read_parquet({{lake}} || '/pool/examples.parquet');

-- A conversation row holds its turns in `messages` (JSON) and their text view in instruction/output.
CREATE OR REPLACE VIEW pool_examples AS
SELECT example_id, pool, source, file, row_index, instruction, input, output, content_hash, shard, messages,
       ingest_flag
FROM pool_rows WHERE status = 'kept';

CREATE OR REPLACE VIEW pool_duplicates AS
SELECT example_id, pool, file, row_index, duplicate_of, instruction, input
FROM pool_rows WHERE status = 'duplicate';

CREATE OR REPLACE VIEW pool_sampled_out AS
SELECT example_id, pool, file, row_index FROM pool_rows WHERE status = 'sampled_out';

CREATE OR REPLACE VIEW pool_quarantine AS
SELECT * FROM read_parquet({{lake}} || '/pool/quarantine.parquet');

CREATE OR REPLACE VIEW pool_files AS
SELECT * FROM read_parquet({{lake}} || '/pool/files.parquet');

-- Pool rows containing a test item the loop evaluates on (word n-gram coverage of the item by a field, or
-- the exact prompt), built by the pool_contamination asset. Methods leave these rows out by default.
CREATE OR REPLACE VIEW pool_contamination AS
SELECT example_id, field, benchmark, capability, test_id, coverage, exact_prompt
FROM read_parquet({{lake}} || '/pool_contamination/*.parquet', union_by_name = true);

-- Near-duplicate clusters of kept pool rows (pool_near_duplicates): instruction and response MinHash LSH,
-- embedding cosine; `group` joins the clusters of every kind. Only rows with a near-duplicate are listed.
CREATE OR REPLACE VIEW pool_near_duplicates AS
SELECT example_id, kind, cluster, cluster_size, "group"
FROM read_parquet({{lake}} || '/pool_near_duplicates/*.parquet', union_by_name = true);
