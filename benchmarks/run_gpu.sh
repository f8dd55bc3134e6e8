#!/usr/bin/env bash
# Every GPU number benchmarks/README.md asks for, prepared to run in one call on a lent H100/H200 (16 cores).
#
#   bash benchmarks/run_gpu.sh numbers OUT   # step rate, counted FLOPs and MFU of each model (fp32, bf16, and
#                                            # each speed change on its own), the loader at 256 px, sampling
#   bash benchmarks/run_gpu.sh paper OUT     # python -m colorization.reproduce --preset paper, timed; run it
#                                            # again after a stop and it resumes (that is the pre-emption test)
#
# That machine has torch, accelerate, torchmetrics and tensorboard but not diffusers or datasets: carry them
# as Python 3.12 wheels in .whl/ (see /work/.library/device/README.md), and the AFHQ cats resized to 128 px in
# .cats128/ (256 px copies do not fit a call's 64 MiB): they are resized to 256 px on the device. Appends JSON
# lines to OUT/results_gpu.jsonl; the paper preset's results folder is OUT/paper-<gpu>/.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-numbers}
out=${2:-benchmarks}
mkdir -p "$out"
results="$out/results_gpu.jsonl"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_DATASETS_CACHE=/tmp/hf-datasets
cats=/tmp/cats256
if [ -d .cats128 ] && [ ! -d "$cats" ]; then
    python3 - <<'EOF'
import os
from concurrent.futures import ProcessPoolExecutor
from PIL import Image

def resize(name):
    Image.open(os.path.join(".cats128", name)).convert("RGB").resize((256, 256), Image.LANCZOS).save(
        os.path.join("/tmp/cats256", name), quality=95)

os.makedirs("/tmp/cats256", exist_ok=True)
with ProcessPoolExecutor(16) as pool:
    list(pool.map(resize, sorted(os.listdir(".cats128")), chunksize=64))
EOF
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/gpu.txt"

if [ "$mode" = numbers ]; then
    bench() { python3 benchmarks/benchmark_training.py --resolution 256 --batch_size 32 --output "$results" "$@"; }
    for precision in no bf16; do
        bench --model cnn --mixed_precision $precision
        bench --model gan --mixed_precision $precision --untrained_vgg
        bench --model diffusion --unet_preset base --mixed_precision $precision
    done
    for change in --channels_last --torch_compile; do  # each speed change on its own, in bf16
        bench --model cnn --mixed_precision bf16 $change
        bench --model gan --mixed_precision bf16 --untrained_vgg $change
        bench --model diffusion --unet_preset base --mixed_precision bf16 $change
    done
    python3 benchmarks/benchmark_loader.py --train_data_dir "$cats" --resolution 256 --workers 0,4,8,15 \
        --images 8000 --output "$results"
    python3 benchmarks/benchmark_loader.py --train_data_dir "$cats" --resolution 256 --workers 8,15 \
        --images 4000 --no-preprocess --output "$results"
    python3 benchmarks/benchmark_sampling.py --resolution 256 --unet_preset base --batch_size 32 \
        --mixed_precision bf16 --samplers dpm,ddim --output "$results"
elif [ "$mode" = paper ]; then
    gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")
    /usr/bin/time -v python3 -m colorization.reproduce --preset paper --train_data_dir "$cats" --no-pretrained \
        --output_dir "$out/paper-$gpu" --data_args "--dataloader_num_workers 15" 2>&1 | tee -a "$out/paper-$gpu.log"
else
    echo "usage: bash benchmarks/run_gpu.sh numbers|paper OUT" >&2
    exit 2
fi
