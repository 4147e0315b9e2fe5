#!/usr/bin/env bash
# The main job on the embedded default: NER on bundled data with a from-scratch tiny transformer, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/nlpkit train --task ner "$@"
