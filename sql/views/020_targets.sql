-- In-domain target rows used for selection (dev/train/fewshot splits only), one file per capability.
CREATE OR REPLACE VIEW target_examples AS
SELECT * FROM read_parquet({{lake}} || '/targets/selection/*.parquet', union_by_name = true);

-- Held-out test rows: for evaluation only, never read by a selection method.
CREATE OR REPLACE VIEW target_test_examples AS
SELECT * FROM read_parquet({{lake}} || '/targets/test/*.parquet', union_by_name = true);
