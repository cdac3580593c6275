#!/usr/bin/env bash
# GPU check (`make gpu-check`), one command under 8 minutes on a GPU machine: install, then one short
# Ray Train run with use_gpu=true and bf16 autocast, printing samples/s and val AUC (and the CPU ratio).
# CI never runs it. Extra arguments go to bench/gpu_check.py (e.g. --skip-cpu --events 100000).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PYTHONUNBUFFERED=1 RAY_TRAIN_V2_ENABLED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! "$VENV/bin/python" -c "import seqctr, ray, torch" 2>/dev/null; then
  make install VENV="$VENV"
fi
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
exec timeout 450 "$VENV/bin/python" bench/gpu_check.py "$@"
