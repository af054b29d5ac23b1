#!/usr/bin/env bash
# Install NeMo-Aligner 0.7.0 + nemo-toolkit 2.4.1 + megatron-core 0.13.1 into a SEPARATE venv
# (default .venv-aligner), for the opt-in aligner test job (`make test-aligner`) and for trying
# the GIFT actor on CPU.
#
# Why a separate venv, and why by hand:
# - nemo-aligner 0.7.0 (its last release) imports nemo.collections.nlp, which exists only up to
#   nemo-toolkit 2.4.1 (3.0 is speech-only). nemo-toolkit 2.4.1[nlp] pins transformers<=4.52,
#   hydra-core<=1.3.2, omegaconf<=2.3, fsspec==2024.12.0 and numpy<2, and pulls CUDA-only
#   packages (bitsandbytes, nvidia-modelopt, nvidia-resiliency-ext). A plain resolve fights the
#   main venv's pins, so the stack (containers/aligner-stack.txt: megatron-core, nemo-toolkit,
#   nemo-aligner) goes in with --no-deps and the deps that the nlp GPT model, the aligner actors
#   and trainers need at import time are listed below.
# - megatron-core is the release NeMo 2.4.x was built against (0.13.1, see aligner-stack.txt),
#   not nemo_gift's own floor (0.16.1), so nemo_gift itself goes in with --no-deps too.
# - The result is about 2.6 GB and took 6 to 17 min on 2 shared cores (docs/nemo-aligner.md); the
#   main venv and the default CI must not carry it.
#
# Python and torch: python3.11 and torch 2.13.0, the CPU wheel on this project's machines (the
# only CPU torch build they have; megatron-core 0.13.1 ships a cp311 wheel). NVIDIA's NeMo 25.07
# image runs Python 3.12 and its own CUDA torch; the image build (containers/Dockerfile.aligner)
# keeps those.
#
# Usage: bash scripts/install_aligner_env.sh [VENV_DIR]     (PYTHON=python3.11 by default)
# Prints the wall time of each stage and the total.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-aligner}
PYTHON=${PYTHON:-python3.11}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_PIP_ARGS=${TORCH_PIP_ARGS:-}
t0=$(date +%s)
stage() { echo "[install_aligner_env] $(( $(date +%s) - t0 )) s: $*"; }

stage "venv $VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" --upgrade pip

stage "torch (CPU)"
# shellcheck disable=SC2086
"${PIP[@]}" $TORCH_PIP_ARGS "$TORCH_SPEC"

stage "megatron-core, nemo-toolkit and nemo-aligner (--no-deps, containers/aligner-stack.txt)"
"${PIP[@]}" --no-deps -r containers/aligner-stack.txt

stage "the deps nemo.collections.nlp and nemo_aligner import"
# Left out on purpose (CUDA-only or unused by the GPT/aligner import path): bitsandbytes,
# nvidia-modelopt, nvidia-resiliency-ext, nvidia-lm-eval, faiss-cpu, sentence_transformers,
# accelerated-scan, apex, transformer-engine, tensorrt, tensorrt-llm, pytriton, mpi4py.
# pangu: 4.0.6.1 is the last release with `pangu.spacing`, which nemo's tokenizer utils import.
# pyarrow 21: the last that imports with numpy<2 (nemo's nlp pin); 22+ needs numpy 2 and breaks
# `import datasets`.
# Not installed, so NeMo 2's `nemo.collections.llm` / `nemo.lightning` do not import here:
# nvidia-resiliency-ext, nemo-run and nvidia-modelopt[torch] (modelopt 0.31, the newest nemo 2.4.1
# accepts, fails on torch 2.13: torch.onnx._type_utils is gone). NeMo 2 checkpoints and the HF
# import therefore need the container (docs/nemo-aligner.md).
"${PIP[@]}" \
  "transformers==4.57.1" "huggingface_hub<1.0" \
  "lightning>=2.2.2,<=2.4.0" "torchmetrics>=0.11.0" \
  "hydra-core==1.3.2" "omegaconf==2.3.0" \
  "numpy<2" cloudpickle fiddle peft webdataset wandb \
  ruamel.yaml text-unidecode wget wrapt onnx python-dateutil scikit-learn numba \
  datasets einops inflect pandas sacremoses "sentencepiece<1.0.0" \
  boto3 flask flask_restful ftfy gdown h5py ijson jieba markdown2 matplotlib \
  "multi-storage-client>=0.21.0" "nltk>=3.6.5" nvtx opencc "pangu==4.0.6.1" prettytable \
  rapidfuzz rouge_score sacrebleu "tiktoken==0.7.0" "zarr>=2.18.2,<3.0.0" "tensorstore<0.1.72" \
  "Jinja2~=3.1.4" jsonlines "pyarrow==21.0.0"

stage "nemo_gift (editable, --no-deps) and its own deps"
# setup.py's INSTALL_REQUIRES and its test extra, less megatron-core (>=0.16.1 there; 0.13.1 here).
"${PIP[@]}" --no-deps -e .
"${PIP[@]}" "safetensors>=0.4.5" "math-verify>=0.8,<0.10" "rich>=13" "tensorboard>=2.16" "tqdm>=4.66" \
  "pytest>=8" "hypothesis>=6.100" "pytest-timeout>=2.3" \
  "transformers==4.57.1" "numpy<2" "hydra-core==1.3.2" "omegaconf==2.3.0"

stage "import check"
"$VENV/bin/python" -c "import megatron.core as m, nemo, nemo_aligner; print('megatron-core', m.__version__, '| nemo-toolkit', nemo.__version__, '| nemo-aligner', nemo_aligner.__version__)"
# These import on CPU as they are; the actor and trainer modules need the test-only shim for
# tensorrt_llm/pytriton/mpi4py/tensorrt (tests/unit/integrations/_aligner_shims.py).
"$VENV/bin/python" -c "import nemo.collections.nlp.models.language_modeling.megatron_gpt_model, nemo_aligner.utils.distributed, nemo_aligner.utils.ppo_utils, datasets"
"$VENV/bin/python" -m nemo_gift.integrations.nemo_aligner.availability
"$VENV/bin/python" -c "import sys; sys.path.insert(0, '.'); from tests.unit.integrations import _aligner_shims as s; s.install(); from nemo_gift.integrations.nemo_aligner import actor, trainer; print('with the test shim: actor and trainer import')"
stage "done; du: $(du -sh "$VENV" | cut -f1)"
