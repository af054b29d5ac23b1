"""Shared pytest configuration.

Markers (registered in setup.cfg):
- ``slow``: skipped unless ``--runslow`` is given (or NEMO_GIFT_RUNSLOW=1).
- ``gpu``: skipped, with the reason, where CUDA is absent.
- ``distributed``: spawns several gloo processes through ``tests.dist_harness``.
"""

import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or os.environ.get("NEMO_GIFT_RUNSLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="gpu: CUDA is not available on this machine")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
