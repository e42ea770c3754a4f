#!/usr/bin/env bash
# The main job: set up (idempotent), then train and evaluate ViT on Fashion-MNIST.
# Extra arguments go to the experiment, e.g. --preset long or --config.total_steps=500.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec .venv/bin/python experiments/vit_fashion_mnist.py --workdir "${WORKDIR:-runs/vit_fashion_mnist}" "$@"
