-- Every evaluated subset with its method and the metric values per capability.
SELECT l.method, l.capability AS selected_for, e.capability, e.metric, e.value, e.n, e.subset_version
FROM evaluations e
JOIN subset_lineage l USING (subset_version)
ORDER BY e.capability, e.metric, l.method, e.subset_version;
