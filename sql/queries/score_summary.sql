-- Score distribution per method and capability.
SELECT method, capability, count(*) AS n, avg(score) AS mean, stddev_pop(score) AS std,
       min(score) AS min, quantile_cont(score, 0.9) AS p90, max(score) AS max
FROM scores
GROUP BY method, capability
ORDER BY method, capability;
