-- Why rows were quarantined, per pool file and reason.
SELECT file, reason, count(*) AS n_rows, min(row_index) AS first_row, any_value(example_id) AS example_id
FROM pool_quarantine
GROUP BY file, reason
ORDER BY n_rows DESC, file, reason;
