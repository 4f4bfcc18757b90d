-- Every slot whose last selection replaced an earlier version, and which inputs differ between the
-- two (pool version, model, template, parameters, the scores read, code). subset_diff shows the rows.
-- Parameters are compared without the score versions: those move with the pool and the features.
SELECT c.method, c.capability, c.slot, c.previous_version AS old_version, c.subset_version AS new_version,
       o.pool_version <> n.pool_version AS pool_changed,
       o.model_id <> n.model_id AS model_changed,
       o.template_hash <> n.template_hash AS template_changed,
       json_merge_patch(o.params_json, '{"score_versions": null}')
           <> json_merge_patch(n.params_json, '{"score_versions": null}') AS params_changed,
       (o.params_json -> '$.score_versions') IS DISTINCT FROM (n.params_json -> '$.score_versions') AS scores_changed,
       o.code_commit IS DISTINCT FROM n.code_commit AS code_changed,
       o.n_selected AS old_selected, n.n_selected AS new_selected, c.selected_at
FROM current_subsets c
JOIN subset_lineage o ON o.subset_version = c.previous_version
JOIN subset_lineage n ON n.subset_version = c.subset_version
WHERE c.previous_version IS NOT NULL AND c.previous_version <> c.subset_version
ORDER BY c.selected_at DESC, c.method, c.capability, c.slot;
