#!/usr/bin/env bash
# Creates .venv and installs nlpkit with its test tools; does nothing when already up to date.
# torch is pinned in the same pip command: alone, a torch range resolves to a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${NLPKIT_EXTRAS:-dev}
TORCH=${NLPKIT_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.nlpkit-installed-$( (cat pyproject.toml; echo "$EXTRAS $TORCH") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "== installing nlpkit[$EXTRAS] into .venv (first run takes a few minutes)"
  # -qq: errors only. A machine's pip configuration can add a warning per package (an extra index that is
  # not there), screens of it on a first install; a failed install still prints its error.
  .venv/bin/python -m pip install -qq --upgrade pip
  .venv/bin/python -m pip install -qq "$TORCH" -e ".[$EXTRAS]"
  rm -f .venv/.nlpkit-installed-*
  touch "$stamp"
fi
