#!/usr/bin/env bash
# GPU check (one CUDA GPU, < 5 minutes on an H200): the gpu-marked tests, then the GPU figures —
# engine vs plain PyTorch per FedAvg round (mlp, cnn) with the test-set evaluation time, and a timed
# 100-round Fashion-MNIST CNN run end to end. No install needed:
#
#   bash scripts/gpu_check.sh                  # from the repository root; python3, PYTHONPATH=src
#
# Environment:
#   PYTHON            interpreter (default python3)
#   GPU_CHECK_ARGS    extra arguments for every fedsqueeze command (e.g. "--data-dir /data/fmnist")
#   PYTEST_ARGS       extra arguments for pytest (e.g. "-x -k codec")
#   FEDSQUEEZE_DATA   where the Fashion-MNIST IDX files are (default: .gpudata/ here if present, else
#                     the usual search path, see docs/gpu.md)
#   GPU_CHECK_OUT     where outputs go (default runs/gpu-check)
#   SKIP_TESTS=1 / SKIP_BENCH=1 / SKIP_RUN=1   leave a part out
#   VEC_RUN=1         also time the 100-round run with --vectorize (about 90 s more on an H200)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
if [ -z "${FEDSQUEEZE_DATA:-}" ] && [ -d .gpudata ]; then export FEDSQUEEZE_DATA="$PWD/.gpudata"; fi
OUT=${GPU_CHECK_OUT:-runs/gpu-check}
mkdir -p "$OUT"
read -r -a EXTRA <<< "${GPU_CHECK_ARGS:-}"
read -r -a PYTEST_EXTRA <<< "${PYTEST_ARGS:-}"
status=0
t_all=$(date +%s.%N)
secs() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }

"$PY" - <<'PY' || { echo "gpu_check: no usable CUDA (see above)"; exit 2; }
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print("device:", torch.cuda.get_device_name(0), f"({torch.cuda.device_count()} visible)")
PY

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "=== pytest -m gpu"
  t0=$(date +%s.%N)
  "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --durations=10 "${PYTEST_EXTRA[@]}" tests || status=1
  echo "gpu tests: $(secs "$t0") s"
fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  echo "=== bench engine --device cuda (mlp, cnn): s per round, engine vs plain loop; eval s = whole test set"
  t0=$(date +%s.%N)
  "$PY" -m fedsqueeze bench engine --device cuda --models mlp,cnn --rounds 5 --out "$OUT/bench-engine" \
      "${EXTRA[@]}" || status=1
  echo "bench engine (cuda): $(secs "$t0") s"
  echo "=== bench vectorize --device cuda (100 MLP clients, 50 CNN clients, 15 steps): sequential vs vectorised"
  t0=$(date +%s.%N)
  "$PY" -m fedsqueeze bench vectorize --device cuda --model mlp,cnn || status=1
  echo "bench vectorize (cuda): $(secs "$t0") s"
fi

if [ "${SKIP_RUN:-0}" != 1 ]; then
  echo "=== fedsqueeze run configs/fmnist-fedavg.toml --device cuda (100 rounds, CNN)"
  rm -rf "$OUT/fmnist-fedavg"
  t0=$(date +%s.%N)
  "$PY" -m fedsqueeze run configs/fmnist-fedavg.toml --device cuda --quiet --out "$OUT/fmnist-fedavg" \
      "${EXTRA[@]}" || status=1
  echo "fmnist-fedavg, 100 rounds on cuda: $(secs "$t0") s wall (process start to end)"
  [ -f "$OUT/fmnist-fedavg/device.json" ] && cat "$OUT/fmnist-fedavg/device.json"
fi
if [ "${SKIP_RUN:-0}" != 1 ] && [ "${VEC_RUN:-0}" = 1 ]; then
  echo "=== the same run with vectorised clients (--vectorize)"
  rm -rf "$OUT/fmnist-fedavg-vec"
  t0=$(date +%s.%N)
  "$PY" -m fedsqueeze run configs/fmnist-fedavg.toml --device cuda --vectorize --quiet --out "$OUT/fmnist-fedavg-vec" \
      "${EXTRA[@]}" || status=1
  echo "fmnist-fedavg --vectorize, 100 rounds on cuda: $(secs "$t0") s wall (process start to end)"
fi

echo "=== gpu_check: $(secs "$t_all") s in all, status $status"
exit $status
