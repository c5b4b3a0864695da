#!/usr/bin/env bash
# Issue #27's "where a GPU is available" figure, sized for a short device slot (a few minutes):
# 224 px streaming SimCLR on one GPU (ResNet-50, bf16, batch 128) in steps/s, as a fraction of the same
# model's steps/s on synthetic crops already on the GPU (goal >= 0.9). Photos: CIFAR-10 upscaled to
# 160-500 px when SSLPIPE_CIFAR10 is set, else smooth random colour fields of the same sizes.
#   bash bench/stream_gpu.sh            # writes $OUT/stream_gpu.json (or ./stream_gpu.json)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
PYTHONPATH="$PWD" RAY_TRAIN_V2_ENABLED=1 python bench/stream.py --gpu --feed-n "${FEED_N:-2048}" \
    --gpu-model "${GPU_MODEL:-resnet50}" --workdir "$(mktemp -d)" | tee "$out/stream_gpu.json"
