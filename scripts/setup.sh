#!/usr/bin/env bash
# Install everything and materialize the pipeline on the embedded default model and the public data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export NAIT_DATA_DIR="${NAIT_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/dagster_home}"
.venv/bin/nait-pipeline materialize
.venv/bin/nait-pipeline query pool_accounting
