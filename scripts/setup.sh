#!/usr/bin/env bash
# Creates .venv, installs the pinned CPU torch, then fedsqueeze with its test and flower extras, and makes sure
# Fashion-MNIST is on the machine. Safe to run again: it skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

stamp=.venv/.fedsqueeze-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  echo "setup: installing torch==2.13.0 (CPU) and fedsqueeze[test,flower] into .venv"
  # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,flower]"
  touch "$stamp"
fi

# Fashion-MNIST: Debian's dataset-fashion-mnist puts the IDX files in /usr/share/datasets/fashion-mnist
if [ -z "${FEDSQUEEZE_DATA:-}" ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing the Debian package dataset-fashion-mnist"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST not found; put the four IDX files in a folder and set FEDSQUEEZE_DATA to it" >&2
  fi
fi
