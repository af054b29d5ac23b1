"""What the GPU install brings for the TensorRT-LLM engine (issue 15, defect 2: Ray was never
installed, though the engine runs TensorRT-LLM's Ray orchestrator, and TensorRT-LLM does not
depend on Ray). The imports themselves are checked on a GPU machine by scripts/gpu_acceptance.sh."""

import ast
from pathlib import Path

from nemo_gift.models.generation import trtllm_engine as te

REPO = Path(__file__).resolve().parents[3]


def _extras() -> dict:
    tree = ast.parse((REPO / "setup.py").read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "EXTRAS"]
    return ast.literal_eval(node.value)


def test_the_engine_asks_for_the_ray_orchestrator():
    kwargs = te.llm_kwargs(te.TrtllmConfig(model_dir="/m"))
    assert kwargs["orchestrator_type"] == "ray"


def test_gpu_extra_and_image_install_ray():
    gpu = _extras()["gpu"]
    assert any(r.startswith("tensorrt-llm==1.2.") for r in gpu)
    assert any(r.split(">")[0].split("=")[0].split("[")[0] == "ray" for r in gpu)
    dockerfile = (REPO / "containers" / "Dockerfile").read_text()
    install = next(line for line in dockerfile.splitlines() if "tensorrt-llm==" in line and line.startswith("RUN"))
    assert '"ray>=' in install
    check = next(line for line in dockerfile.splitlines() if line.startswith('RUN python -c "import'))
    assert " ray," in check and "tensorrt_llm" in check
