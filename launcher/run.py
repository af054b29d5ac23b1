#!/usr/bin/env python
"""Run a recipe: ``python launcher/run.py conf=gift_tiny [key=value ...] [--dry-run]``.

``conf=NAME`` picks ``conf/NAME.yaml`` (composed by Hydra from its ``defaults:`` overlays);
``cluster=local_slurm`` or ``cluster=dgx_h100`` picks where it runs. The whole config is
validated before anything starts. See nemo_gift/launcher/main.py for the steps.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source checkout needs no install

from nemo_gift.launcher.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
