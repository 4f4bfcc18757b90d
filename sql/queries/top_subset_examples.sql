-- The best examples of the newest subset of a method and capability, with their text.
-- Parameters: $method (e.g. 'nait'), $capability (e.g. 'math', or 'all'), $k (rows).
WITH newest AS (
    SELECT subset_version
    FROM subset_lineage
    WHERE method = $method AND capability = $capability
    ORDER BY created_at DESC, subset_version
    LIMIT 1
)
SELECT s.rank, s.example_id, s.score, p.source, p.instruction, p.input, p.output, s.subset_version
FROM subsets s
JOIN newest USING (subset_version)
JOIN pool_examples p USING (example_id)
ORDER BY s.rank
LIMIT $k;
