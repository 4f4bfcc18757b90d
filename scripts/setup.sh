#!/usr/bin/env bash
# Install everything and materialize the pipeline (foundation + NAIT) on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export NAIT_DATA_DIR="${NAIT_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/dagster_home}"
# A seeded 100 rows per pool keeps the first run near 10 minutes on 2 CPU cores; set
# NAIT_POOL_SAMPLE= (empty) for the whole pool.
export NAIT_POOL_SAMPLE="${NAIT_POOL_SAMPLE-100}"
.venv/bin/nait-pipeline materialize
.venv/bin/nait-pipeline query pool_accounting
.venv/bin/nait-pipeline query top_subset_examples --param method=nait --param capability=math --param k=20
