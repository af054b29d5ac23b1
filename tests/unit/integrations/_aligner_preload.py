"""Imported once by ``run_on_ranks``' forkserver in the aligner venv (``conftest.py``): the test shim,
then the NeMo and NeMo-Aligner modules the rank functions use. No patch is applied here; each
rank applies what it needs (``test_aligner_cpu_compat`` checks each patch's failure without it)."""

from tests.unit.integrations import _aligner_shims

_aligner_shims.install()

import nemo_aligner.utils.train_script_utils  # noqa: E402,F401

import nemo_gift.integrations.nemo_aligner.actor  # noqa: E402,F401
import nemo_gift.integrations.nemo_aligner.trainer  # noqa: E402,F401
