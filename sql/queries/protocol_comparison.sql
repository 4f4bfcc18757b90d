-- One comparison's result: each method's headline numbers beside random (mean ± std) and the full pool,
-- with its selection cost. Parameter: $protocol (the comparison name, e.g. cpu-2k).
SELECT method, eval_capability, metric, runs, round(mean, 4) AS mean, round(std, 4) AS std,
       round(random_mean, 4) AS random_mean, round(random_std, 4) AS random_std,
       round(full_value, 4) AS full_pool, round(delta_vs_random, 4) AS delta_vs_random,
       higher_is_better, n_items, n_selected, round(selection_seconds, 1) AS selection_s, selection_tokens,
       round(train_seconds, 1) AS train_s
FROM comparisons
WHERE comparison = $protocol
ORDER BY eval_capability, metric, method;
