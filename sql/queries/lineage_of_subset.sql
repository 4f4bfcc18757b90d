-- Where a subset came from, and what it holds per source pool. Parameter: $subset_version.
-- Rows that left the pool (or whose text changed since the selection) stay visible, counted under
-- source '(not in the current pool)' / '(changed since selection)', so lineage never goes blank.
SELECT l.subset_version, l.method, l.capability, l.pool_version, l.model_id, l.template_hash,
       l.params_json, l.n_pool, l.n_selected, l.selected_ids_sha256, l.created_at,
       CASE WHEN p.example_id IS NULL THEN '(not in the current pool)'
            WHEN s.content_hash IS NOT NULL AND s.content_hash <> p.content_hash THEN '(changed since selection)'
            ELSE p.source END AS source,
       count(*) AS n_from_source
FROM subset_lineage l
JOIN subsets s USING (subset_version)
LEFT JOIN pool_examples p USING (example_id)
WHERE l.subset_version = $subset_version
GROUP BY ALL
ORDER BY n_from_source DESC;
