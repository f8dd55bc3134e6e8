#!/usr/bin/env bash
# The GPU measurements recorded in benchmarks/README.md: the paper preset's 256x256, batch 32, fp32 vs bf16.
# The GAN includes its VGG-16 perceptual loss (randomly initialised here: the same cost, and no download).
# Appends to the JSON-lines file given as $1 (default benchmarks/results_gpu.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results_gpu.jsonl}
for precision in no bf16; do
  python benchmarks/benchmark_training.py --model cnn --resolution 256 --batch_size 32 --mixed_precision $precision --output "$out"
  python benchmarks/benchmark_training.py --model gan --resolution 256 --batch_size 32 --mixed_precision $precision --untrained_vgg --output "$out"
  python benchmarks/benchmark_training.py --model diffusion --unet_preset base --resolution 256 --batch_size 32 --mixed_precision $precision --output "$out"
  python benchmarks/benchmark_sampling.py --resolution 256 --unet_preset base --batch_size 32 --mixed_precision $precision --output "$out"
done
