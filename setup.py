"""nemo_gift: GIFT (Group-relative Implicit Fine Tuning) on megatron-core.

Versions
--------
``install_requires`` holds *ranges*: every one admits both stacks this project runs on.
The exact, tested CPU pins live in ``constraints.txt`` (``pip install -c constraints.txt``),
which the Makefile and CI use.

- torch: not pulled here beyond a floor. The CPU machines install ``torch==2.13.0`` (a local
  CPU wheel) before this package; the GPU images (NGC PyTorch, Python 3.12) bring their own
  CUDA build, which must not be replaced. A bare ``torch`` requirement would pull a
  multi-GB CUDA wheel onto a CPU machine.
- megatron-core: ``>=0.16.1,<0.20``. 0.17 and later declare ``Requires-Python >=3.12``, so on
  the Python 3.11 CPU machines pip resolves to 0.16.1, and on the 3.12 GPU images it takes the
  newest 0.19.x. The code uses the API common to both; version branches live in
  ``nemo_gift/distributed/cpu_compat.py`` only.
- transformers / datasets / numpy: TensorRT-LLM 1.2.1 pins ``transformers==4.57.1``,
  ``datasets==3.1.0`` and ``numpy<2`` in the same environment, so the ranges admit those, and
  the CPU lock uses the current releases (transformers 5.x).
- ``gpu`` extra: ``ray`` is there because the rollout engine runs TensorRT-LLM with its Ray
  orchestrator (the RL weight-update and sleep/wake path, as verl does), and TensorRT-LLM does
  not depend on Ray itself. TensorRT-LLM is not installable from PyPI (the ``tensorrt-llm`` package there
  is a stub that downloads from NVIDIA's index at build time). Install it with
  ``pip install -e .[gpu] --extra-index-url https://pypi.nvidia.com``, as containers/Dockerfile does.
- No ``aligner`` extra: NeMo-Aligner 0.7.0 (its last release) needs nemo-toolkit 2.4.1 (the last
  with ``nemo.collections.nlp``), which runs only with megatron-core 0.13.x, below this package's
  own range. The lane's versions live in ``containers/aligner-stack.txt``, installed with
  ``--no-deps`` into a separate venv by ``scripts/install_aligner_env.sh`` (``make test-aligner``)
  and into ``containers/Dockerfile.aligner`` (docs/nemo-aligner.md).
- ``slurm`` extra: Slurm submission goes through NeMo-Run (``nemo_gift/launcher/slurm.py``). It is
  needed only where jobs are submitted from (a login node or a workstation), never in the
  training image, so it is an extra rather than a requirement: about 90 packages (torchx,
  fiddle, fabric/paramiko, leptonai). ``leptonai<0.47``: nemo-run 0.11.1 imports
  ``leptonai.api.v1``, which 0.47 removed. The Makefile and CI install it (the Slurm tests).
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "torch>=2.6",
    "megatron-core>=0.16.1,<0.20",
    "omegaconf>=2.3,<2.4",
    "hydra-core>=1.3.2,<1.4",
    "transformers>=4.57.1,<6",
    "safetensors>=0.4.5",
    "datasets>=3.1.0,<6",
    "math-verify>=0.8,<0.10",
    "rich>=13",
    "tensorboard>=2.16",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    # megatron-core's torch_dist checkpoint writer needs it (its workers die without it, and the
    # save then hangs) but does not declare it.
    "psutil>=5.9",
]

EXTRAS = {
    "test": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3"],
    "gpu": ["transformer-engine[pytorch]>=2.8,<2.21", "tensorrt-llm==1.2.1", "ray>=2.48,<3"],
    "bench": ["trl>=1.16,<2"],  # benchmarks/rl_step.py --peer trl only; never a test dependency
    "slurm": ["nemo-run>=0.11.1,<0.12", "leptonai>=0.26,<0.47"],
}

setup(
    name="nemo_gift",
    version="0.1.0",
    description="GIFT (Group-relative Implicit Fine Tuning) on NVIDIA megatron-core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nemo_gift", "nemo_gift.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["nemo-gift-doctor=nemo_gift.doctor:main"]},
)
