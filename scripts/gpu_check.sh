#!/usr/bin/env bash
# The CUDA checks on one GPU: the gpu-marked tests (tests/test_gpu.py) and benchmarks/mfu.py with short settings.
# Meant to take under 5 minutes on one recent NVIDIA GPU; exits 1 on any failure, 2 when no CUDA device is visible.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: scripts/gpu_check.sh [--require-all] [--keep] [-- PYTEST_ARGS...]

Runs, on the first visible CUDA GPU:
  1. pytest -m gpu -rs tests/test_gpu.py   bf16 and fp16 training and inference, QLoRA 4-bit and 8-bit,
                                           FSDP2 on a one-rank NCCL group, ZeRO-3 through Accelerate,
                                           LoRA merge, mfu.py --quick
  2. python benchmarks/mfu.py --quick      measured matmul peak and model FLOPs utilisation of a short
                                           training run (tiny BERT, bundled NER data), fp32 and bf16

then prints a summary. A test that needs a package that is not installed (bitsandbytes, deepspeed) is
skipped with that reason and listed in the summary.

options:
  --require-all   count skipped tests as failures (a full check of every CUDA path)
  --keep          keep the work folder (logs, mfu.json) and print where it is
  -h, --help      this text
  -- ARGS         passed on to pytest (e.g. -- -k qlora)

environment: PYTHON (default .venv/bin/python, else python3).
exit status: 0 all passed, 1 a test or mfu.py failed, 2 no CUDA device visible (or a bad option).
EOF
}

require_all=0
keep=0
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --require-all) require_all=1 ;;
    --keep) keep=1 ;;
    --) shift; pytest_args=("$@"); break ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if ! device=$("$PY" - 2>&1 <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}) sees no CUDA device")
print(f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})")
PY
); then
  echo "gpu_check: refused: no CUDA GPU is visible: ${device##*$'\n'}" >&2
  echo "gpu_check: run it on a machine with an NVIDIA GPU and a CUDA build of torch (CUDA_VISIBLE_DEVICES set?)" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/nlpkit-gpu-check.XXXXXX")
if [ "$keep" = 1 ]; then
  trap 'echo "gpu_check: work folder kept: $work"' EXIT
else
  trap 'rm -rf "$work"' EXIT
fi
began=$SECONDS
echo "== gpu_check on $device"

# 1. the gpu-marked tests
echo "== 1/2 pytest -m gpu -rs tests/test_gpu.py ${pytest_args[*]:-}"
t0=$SECONDS
timeout 420 "$PY" -m pytest -m gpu -rs -p no:cacheprovider tests/test_gpu.py ${pytest_args[@]+"${pytest_args[@]}"} \
  2>&1 | tee "$work/pytest.log"
tests_rc=${PIPESTATUS[0]}
tests_s=$((SECONDS - t0))

# 2. mfu.py --quick: a data root in the benchmarks' layout from the bundled NER data, a private cache
echo "== 2/2 python benchmarks/mfu.py --quick --size 4096"
mkdir -p "$work/data/conll2003"
gzip -c tasks/data/ner/train.conll > "$work/data/conll2003/train.txt.gz"
gzip -c tasks/data/ner/dev.conll > "$work/data/conll2003/valid.txt.gz"
t0=$SECONDS
NLPKIT_BENCH_CACHE="$work/cache" timeout 240 "$PY" benchmarks/mfu.py --quick --size 4096 \
  --data-root "$work/data" --json "$work/mfu.json" 2>&1 | tee "$work/mfu.log"
mfu_rc=${PIPESTATUS[0]}
mfu_s=$((SECONDS - t0))

# summary
echo
echo "== summary ($device, $((SECONDS - began)) s)"
tally=$(grep -E '^=+ .* in [0-9.]+s.* =+$' "$work/pytest.log" | tail -1 | tr -d '=' | sed 's/^ *//;s/ *$//')
skips=$(grep -oE '[0-9]+ skipped' <<<"$tally" | grep -oE '[0-9]+' || true)
skips=${skips:-0}
failed=0
if [ "$tests_rc" = 0 ]; then
  echo "tests:  ok      (${tally:-?}; ${tests_s} s)"
else
  echo "tests:  FAILED  (${tally:-exit status $tests_rc}; ${tests_s} s)"
  grep -E '^(FAILED|ERROR) ' "$work/pytest.log" | sed 's/^/        /'
  failed=1
fi
if [ "$skips" -gt 0 ]; then
  grep '^SKIPPED' "$work/pytest.log" | sed 's/^/        /'
  if [ "$require_all" = 1 ]; then
    echo "        --require-all: $skips skipped test(s) count as failures"
    failed=1
  fi
fi
if [ "$mfu_rc" = 0 ] && [ -f "$work/mfu.json" ]; then
  mfu_line=$("$PY" - "$work/mfu.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(", ".join(f"{q}: MFU {v['mfu'] * 100:.2f}% of a measured {r['peaks'][q]['best'] / 1e12:.3g} TFLOP/s peak, "
                f"{v['tokens_per_s']:.0f} tokens/s" for q, v in r["runs"].items()))
PY
)
  echo "mfu.py: ok      (${mfu_line}; ${mfu_s} s)"
else
  echo "mfu.py: FAILED  (exit status $mfu_rc; ${mfu_s} s; the last lines are above)"
  failed=1
fi
if [ "$failed" = 0 ]; then
  echo "gpu_check: PASSED"
else
  echo "gpu_check: FAILED"
fi
exit "$failed"
