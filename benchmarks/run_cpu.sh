#!/usr/bin/env bash
# The CPU measurements recorded in benchmarks/README.md (64x64; 256x256 is a GPU job). Appends to
# benchmarks/results_cpu.jsonl. Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results_cpu.jsonl
for precision in no bf16; do
  python benchmarks/benchmark_training.py --model cnn --resolution 64 --batch_size 32 --mixed_precision $precision --output $out
  python benchmarks/benchmark_training.py --model gan --resolution 64 --batch_size 32 --mixed_precision $precision --lambda_perceptual 0 --output $out
  python benchmarks/benchmark_training.py --model diffusion --unet_preset small --resolution 64 --batch_size 32 --mixed_precision $precision --output $out
done
python benchmarks/benchmark_sampling.py --resolution 64 --unet_preset small --batch_size 8 --output $out
