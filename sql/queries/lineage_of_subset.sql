-- Where a subset came from, and what it holds per source pool. Parameter: $subset_version.
SELECT l.subset_version, l.method, l.capability, l.pool_version, l.model_id, l.template_hash,
       l.params_json, l.n_pool, l.n_selected, l.selected_ids_sha256, l.created_at,
       p.source, count(*) AS n_from_source
FROM subset_lineage l
JOIN subsets s USING (subset_version)
JOIN pool_examples p USING (example_id)
WHERE l.subset_version = $subset_version
GROUP BY ALL
ORDER BY n_from_source DESC;
