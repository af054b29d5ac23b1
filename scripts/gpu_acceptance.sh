#!/usr/bin/env bash
# GPU acceptance of what the CPU tests cannot show (TensorRT-LLM, Ray, CUDA IPC refit, sleep/wake,
# Transformer Engine, FP8, the trainer with rollout.engine=trtllm). One command, no network, at
# most 8 minutes on one H200; prints one line per check (scripts/gpu_acceptance.py --list).
#
#   bash scripts/gpu_acceptance.sh                 # every check
#   bash scripts/gpu_acceptance.sh --only imports  # one of them
#
# Exit status: 0 all passed, 1 one failed, 3 no CUDA here, 124 over the 8-minute budget.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
# MPI off before any tensorrt_llm import, as the trainer's engine owner does (trtllm_runtime.owner_env)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CUDA_DEVICE_MAX_CONNECTIONS=1 TLLM_DISABLE_MPI=1
timeout --kill-after=20 480 "$PYTHON" scripts/gpu_acceptance.py "$@"
