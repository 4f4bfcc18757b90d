-- The best examples of the current subset of a method and capability, with their text.
-- Parameters: $method (e.g. 'nait'), $capability (e.g. 'math', or 'all'), $k (rows).
-- "Current" is what the method's last selection wrote (current_subsets; for seeded methods the
-- lowest seed), else the newest version in the lineage.
WITH chosen AS (
    SELECT subset_version FROM (
        SELECT subset_version, 0 AS preference, slot, selected_at AS made_at FROM current_subsets
        WHERE method = $method AND capability = $capability
        UNION ALL
        SELECT subset_version, 1 AS preference, '' AS slot, created_at AS made_at FROM subset_lineage
        WHERE method = $method AND capability = $capability
    )
    ORDER BY preference, slot, made_at DESC, subset_version
    LIMIT 1
)
SELECT s.rank, s.example_id, s.score, p.source, p.instruction, p.input, p.output, s.subset_version
FROM subsets s
JOIN chosen USING (subset_version)
JOIN pool_examples p USING (example_id)
ORDER BY s.rank
LIMIT $k;
