#!/usr/bin/env bash
# Install everything and materialize the pipeline (foundation + every method but the on-demand gradient ones) on the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# One settings file for the CLI, `dagster dev`, the sensors: written once, edit it to change them.
# A seeded 100 rows per pool keeps the first run near 25 minutes on 2 CPU cores (LP's selector included); remove the
# pool_sample line (or run with NAIT_POOL_SAMPLE= ) for the whole pool.
if [ ! -f nait_settings.toml ]; then
  sample="${NAIT_POOL_SAMPLE-100}"
  if [ -n "$sample" ]; then sample_line="pool_sample = $sample"; else sample_line="# pool_sample = 100"; fi
  cat > nait_settings.toml <<TOML
# nait_pipeline settings (see README, "Configuration"); environment variables override them.
data_dir = "${NAIT_DATA_DIR:-../shared/data}"
store_dir = "data/store"
$sample_line

[automation]
# Featurize new pool shards as soon as they land (hours of CPU on a whole pool).
featurize_new_shards = false
max_shards_per_tick = 4
TOML
  echo "wrote nait_settings.toml"
fi
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/dagster_home}"
.venv/bin/nait-pipeline materialize
.venv/bin/nait-pipeline query pool_accounting
.venv/bin/nait-pipeline query top_subset_examples --param method=nait_c --param capability=math --param k=20
