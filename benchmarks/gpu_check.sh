#!/usr/bin/env bash
# One prepared GPU session (H100/H200, ~9 minutes): train the default pipeline on the GPU, then
# measure training and sampling speed. Run through the device tool from the repository root with
#   carry: .whl (diffusers, datasets and their missing deps as wheels), .gpu_data (Fashion-MNIST IDX files)
# Everything it writes that matters lands in $OUT (the trained pipeline as split tar parts, logs, JSON).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, diffusers, transformers, accelerate, datasets; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, torch.cuda.get_device_name())" || exit 1

# 1. The default pipeline, trained on the GPU (same script as on the CPU; only sizes differ)
t "training the default pipeline"
RUN=runs/gpu-default-32 FMNIST_DIR=.gpu_data/fashion-mnist DATA_WORKERS=16 \
CLIP_STEPS=${CLIP_STEPS:-2500} CLIP_BATCH=512 GAN_SECONDS=${GAN_SECONDS:-270} BATCH=256 LR=2e-4 WORKERS=8 CKPT_STEPS=500 \
SHIP=runs/gpu-default-32/ship bash scripts/train_default_model.sh > "$OUT/train_default.log" 2>&1
echo "train_default_model.sh exit $?"; grep -v "Steps:" "$OUT/train_default.log" | tail -25
t "packing outputs"
tar -C runs/gpu-default-32 -cf /tmp/default.tar ship clip/README.md clip/retrieval.json gan/README.md gan/logs 2>/dev/null
tar -C runs/gpu-default-32 -rf /tmp/default.tar --exclude='checkpoint-*' clip/clip 2>/dev/null
split -b 15M -d /tmp/default.tar "$OUT/default.tar.part"; ls -la "$OUT"

# 2. Training throughput, FLOPs, MFU, peak memory (bf16; 64/128/256 px)
t "train throughput"
timeout 90 python3 benchmarks/train_throughput.py --device cuda --resolutions 64 128 256 --precisions bf16 \
  --batch_size 64 --peak_tflops 989 --out "$OUT/train_throughput.jsonl"

# 3. Sampling speed at batch 1 and 64 (bf16), default 32 px generator
t "sampling speed"
for bs in 1 64; do
  timeout 40 python3 benchmarks/sampling_speed.py --device cuda --dtype bfloat16 --batch_size $bs --repeats 20
done
t "done"
