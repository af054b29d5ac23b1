"""In the aligner venv, the ranks of these tests start from a forkserver that has imported NeMo
and NeMo-Aligner once (``_aligner_preload``), instead of importing them in every rank."""

import importlib.util

if importlib.util.find_spec("nemo_aligner") is not None:
    from nemo_gift.distributed import spawn

    spawn.preload("tests.unit.integrations._aligner_preload")
