#!/usr/bin/env bash
# The GPU comparisons of issue 7, in one short script (about 6-9 minutes on one H100/H200):
#
#   1. ViT-B/16, 224 px, batch 256, bf16 compute / f32 params, AdamW, GAP (196 tokens):
#      training and inference img/s + MFU, jaxvision (cuDNN fused attention) vs timm's
#      VisionTransformer under torch.compile (autocast bf16), same shapes.
#   2. The same training with a CLS token (197 tokens: the padded cuDNN path).
#   3. ViT-B/16 training with scan_layers: compile time (warm-up) and img/s, ours only.
#   4. DCGAN 64x64x3, batch 128, one D + one G step: jaxvision vs PyTorch eager, then ours
#      with 4 iterations per dispatch.
#
# Needs jax (CUDA), flax, optax, torch and timm; no TensorFlow (none of these benchmarks
# import it). Each side runs in its own process and both stay alive while their timed
# bursts alternate, so JAX must not preallocate 75% of the GPU: XLA_PYTHON_CLIENT_PREALLOCATE
# =false lets each framework take what it needs (ViT-B/16 at batch 256 needs tens of GiB per
# side; on an 80 GiB H100 an out-of-memory side is reported and the script goes on - rerun
# on an H200, or with --batch-size 128). Results: $OUT/*.json and a summary.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine
#   SMOKE=1 bash benchmarks/gpu_check.sh         # the same commands on tiny shapes (any CPU)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/bench/gpu}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
export TF_CPP_MIN_LOG_LEVEL=2
mkdir -p "$OUT"

if [ "${SMOKE:-0}" = "1" ]; then
  VIT=(--preset tiny --steps 1 --rounds 1 --min-burst-seconds 0 --threads 1)
  GAN=(--preset tiny --steps 1 --rounds 1 --min-burst-seconds 0 --threads 1)
  LIMIT=120
else
  VIT=(--preset b16 --steps 10 --rounds 3 --min-burst-seconds 2)
  GAN=(--preset dcgan64 --steps 20 --rounds 3 --min-burst-seconds 2)
  LIMIT=300
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY - <<'EOF'
import jax, flax, optax
print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax", optax.__version__)
try:
    import torch, timm
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "timm", timm.__version__)
except ImportError as err:
    print("peer missing:", err)
EOF

run() {  # name, command...: a failure or timeout is reported and the script goes on
  local name=$1; shift
  echo; echo "=== $name"
  local t0=$SECONDS
  timeout "$LIMIT" "$@"
  echo "=== $name: exit $? after $((SECONDS - t0)) s"
}

run vit_b16_gap  $PY benchmarks/vit.py "${VIT[@]}" --mode both --peer timm --peer-compile --out "$OUT/vit_b16_gap.json"
run vit_b16_cls  $PY benchmarks/vit.py "${VIT[@]}" --pool cls --peer timm --peer-compile --out "$OUT/vit_b16_cls.json"
run vit_b16_scan $PY benchmarks/vit.py "${VIT[@]}" --scan-layers --peer none --out "$OUT/vit_b16_scan.json"
run dcgan64      $PY benchmarks/gan.py "${GAN[@]}" --out "$OUT/dcgan64.json"
run dcgan64_k4   $PY benchmarks/gan.py "${GAN[@]}" --steps-per-dispatch 4 --peer none --out "$OUT/dcgan64_k4.json"

echo; echo "=== summary"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for f in sorted(out.glob("*.json")):
    r = json.loads(f.read_text())
    for mode in ("train", "infer"):
        if mode not in r:
            continue
        ours, peer = r[mode].get("jaxvision", {}), r[mode].get("peer", {})
        line = f"{f.stem:<14} {mode:<6} ours {ours.get('best', float('nan')):9.1f} {ours.get('unit', '')}"
        if ours.get("mfu"):
            line += f" (MFU {ours['mfu']:.0%})"
        line += f", warm-up {ours.get('warmup_seconds', float('nan')):.0f} s"
        if "best" in peer:
            line += f" | peer {peer['best']:9.1f}"
            if peer.get("mfu"):
                line += f" (MFU {peer['mfu']:.0%})"
            line += f" | ratio {r[mode]['ratio_jaxvision_over_peer']:.2f}"
        mem = ours.get("device_peak_bytes_in_use")
        if mem:
            line += f" | our peak {mem / 2**30:.1f} GiB"
        if peer.get("device_max_memory_allocated"):
            line += f", peer peak {peer['device_max_memory_allocated'] / 2**30:.1f} GiB"
        print(line)
EOF
