#!/usr/bin/env bash
# The checks that need a CUDA device, in one short run from the repo root on a GPU box:
# the gpu-marked tests (bf16 autocast, training and the child on CUDA) and the throughput table.
#   bash bench/gpu_check.sh OUTDIR      then, back here: python -m bench.throughput --render OUTDIR/throughput-gpu.json
set -uo pipefail
out=${1:-bench/out/gpu}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/nvidia-smi.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$out/nvidia-smi.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$out/pytest-gpu.txt"
python3 -m bench.throughput --rows "${ROWS:-8192}" --eval-rows 2000 --epochs 1 --no-write \
    --json "$out/throughput-gpu.json" 2>&1 | grep -v -i warn | tee "$out/throughput.txt"
