-- Why an example is in a subset: its rank, the capability it was scored for (in an all-capability
-- subset, the capability whose turn chose it), and one row per layer with that layer's contribution
-- to the score, plus the example's nearest in-domain rows. Layer rows come from scorers that explain
-- their scores (NAIT-C); for others the layer columns are NULL.
-- Parameters: $subset_version, $example_id.
WITH picked AS (
    SELECT s.subset_version, s.example_id, s.rank, s.score AS subset_score, l.method, l.capability AS subset_capability,
           coalesce(e.chosen_by, l.capability) AS scored_for
    FROM subsets s
    JOIN subset_lineage l USING (subset_version)
    LEFT JOIN subset_explanations e USING (subset_version, example_id)
    WHERE s.subset_version = $subset_version AND s.example_id = $example_id
),
explained AS (
    SELECT p.*, sc.score AS capability_score, sc.layer_contributions, sc.nearest_targets, sc.nearest_similarity
    FROM picked p
    LEFT JOIN scores sc ON sc.method = p.method AND sc.capability = p.scored_for AND sc.example_id = p.example_id
)
SELECT subset_version, example_id, rank, method, subset_capability, scored_for, capability_score,
       generate_subscripts(layer_contributions, 1) AS layer, unnest(layer_contributions) AS contribution,
       nearest_targets, nearest_similarity
FROM explained
WHERE layer_contributions IS NOT NULL
UNION ALL
SELECT subset_version, example_id, rank, method, subset_capability, scored_for, capability_score,
       NULL AS layer, NULL AS contribution, nearest_targets, nearest_similarity
FROM explained
WHERE layer_contributions IS NULL
ORDER BY layer;
