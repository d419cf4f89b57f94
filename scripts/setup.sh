#!/usr/bin/env bash
# Creates .venv, installs the pinned CPU torch, then fedsqueeze with its test, flower, digits and plots extras
# (everything the tests need), and makes sure
# Fashion-MNIST and Debian's fortune files are on the machine. Safe to run again: it skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

stamp=.venv/.fedsqueeze-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  echo "setup: installing torch==2.13.0 (CPU) and fedsqueeze[test,flower,sim,digits,plots] into .venv"
  # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,flower,sim,digits,plots]"
  touch "$stamp"
fi

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
apt_updated=""
apt_install() {  # apt_install PACKAGE...: quietly, running apt-get update once
  [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# Fashion-MNIST: Debian's dataset-fashion-mnist puts the IDX files in /usr/share/datasets/fashion-mnist
if [ -z "${FEDSQUEEZE_DATA:-}" ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing the Debian package dataset-fashion-mnist"
    apt_install dataset-fashion-mnist
  else
    echo "setup: Fashion-MNIST not found; put the four IDX files in a folder and set FEDSQUEEZE_DATA to it" >&2
  fi
fi

# Debian's fortune cookies (the `fortunes` text source): English (fortunes, fortunes-min) plus the
# German, Spanish and Italian packages, in /usr/share/games/fortunes. One file per package tells.
missing=""
for check in fortunes:computers fortunes-min:riddles fortunes-de:de/zitate fortunes-es:es/refranes.fortunes \
             fortunes-it:it/italia; do
  [ -f "/usr/share/games/fortunes/${check#*:}" ] || missing="$missing ${check%%:*}"
done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing the Debian packages$missing"
    # shellcheck disable=SC2086  # one word per package
    apt_install $missing
  else
    echo "setup: fortune files not found; install the packages$missing (or point data.dir at fortune files)" >&2
  fi
fi
