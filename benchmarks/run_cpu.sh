#!/usr/bin/env bash
# The CPU measurements recorded in benchmarks/README.md (64x64; 256x256 is a GPU job: run_gpu.sh). Appends to
# benchmarks/results_cpu.jsonl. Run on an otherwise idle machine, from the repository root, with the AFHQ
# cats beside it (../shared/data/afhq_cat).
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results_cpu.jsonl
cats=${CATS:-../shared/data/afhq_cat}
bench() { python benchmarks/benchmark_training.py --resolution 64 --batch_size 32 --output $out "$@"; }
for precision in no bf16; do
  bench --model cnn --mixed_precision $precision
  bench --model gan --mixed_precision $precision --lambda_perceptual 0
  bench --model diffusion --unet_preset small --mixed_precision $precision
done
for model in cnn gan diffusion; do  # channels-last on its own, in bf16
  bench --model $model --mixed_precision bf16 --channels_last --lambda_perceptual 0 --unet_preset small
done
python benchmarks/benchmark_loader.py --train_data_dir "$cats" --resolution 64 --workers 0,2 --output $out
python benchmarks/benchmark_loader.py --train_data_dir "$cats" --resolution 64 --workers 2 --no-preprocess --output $out
python benchmarks/harness_overhead.py --train_data_dir "$cats" --steps 120 --repeats 2 --output $out
python benchmarks/benchmark_sampling.py --resolution 64 --unet_preset small --batch_size 8 --output $out
