-- Every row read from the pool files is accounted for, per file:
-- kept + duplicates + sampled out + quarantined = read.
WITH by_status AS (
    SELECT file,
           count(*) FILTER (WHERE status = 'kept') AS kept,
           count(*) FILTER (WHERE status = 'duplicate') AS duplicates,
           count(*) FILTER (WHERE status = 'sampled_out') AS sampled_out
    FROM pool_rows GROUP BY file
), quarantined AS (
    SELECT file, count(*) AS quarantined FROM pool_quarantine GROUP BY file
)
SELECT f.file,
       f.rows_read,
       coalesce(s.kept, 0) AS kept,
       coalesce(s.duplicates, 0) AS duplicates,
       coalesce(s.sampled_out, 0) AS sampled_out,
       coalesce(q.quarantined, 0) AS quarantined,
       f.rows_read = coalesce(s.kept, 0) + coalesce(s.duplicates, 0) + coalesce(s.sampled_out, 0)
                     + coalesce(q.quarantined, 0) AS balanced
FROM pool_files f
LEFT JOIN by_status s USING (file)
LEFT JOIN quarantined q USING (file)
ORDER BY f.file;
