-- How many in-domain rows each capability uses for selection, per task and split.
SELECT capability, task, split, count(*) AS n_rows
FROM target_examples
GROUP BY capability, task, split
ORDER BY capability, task, split;
