-- What changed between two versions of a subset: rows added, removed, and kept (with both ranks and
-- whether their text changed), with source and instruction. Parameters: $old_version, $new_version.
WITH old AS (SELECT example_id, rank, content_hash FROM subsets WHERE subset_version = $old_version),
     new AS (SELECT example_id, rank, content_hash FROM subsets WHERE subset_version = $new_version)
SELECT coalesce(new.example_id, old.example_id) AS example_id,
       CASE WHEN old.example_id IS NULL THEN 'added' WHEN new.example_id IS NULL THEN 'removed' ELSE 'kept' END AS change,
       old.rank AS old_rank, new.rank AS new_rank, old.rank - new.rank AS rank_change,
       (old.example_id IS NOT NULL AND new.example_id IS NOT NULL
        AND old.content_hash IS DISTINCT FROM new.content_hash) AS text_changed,
       p.source, left(p.instruction, 80) AS instruction
FROM old
FULL OUTER JOIN new ON old.example_id = new.example_id
LEFT JOIN pool_examples p ON p.example_id = coalesce(new.example_id, old.example_id)
ORDER BY change, coalesce(new.rank, old.rank);
