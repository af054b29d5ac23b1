import pytest

from nemo_gift.rewards import MathEquivalencePool, VerifierConfig, get_verifier

FAST_TIMEOUT_S = 1.0
"""Per-check timeout for the cases meant to time out and for the fuzz: short, so they stay cheap."""
PATIENT_TIMEOUT_S = 20.0
"""Per-check timeout for cases that must not time out, even on an overloaded CI host."""
CALL_BOUND_S = FAST_TIMEOUT_S + 15.0
"""The most one verifier call may take here: the timeout, plus the start of a replacement
worker (about 0.6 s on an idle machine, several seconds on a shared, overloaded CI host)."""


@pytest.fixture(scope="session")
def mv_pool():
    """One math-verify worker pool for the session (started once, about a second)."""
    with MathEquivalencePool(num_workers=2, timeout_s=FAST_TIMEOUT_S) as pool:
        pool.start()
        yield pool


NAMES = ["gsm8k", "math", "dapo", "aime", "arithmetic", "arithmetic_reversed"]


@pytest.fixture(scope="session")
def verifiers(mv_pool):
    """Every verifier with the short timeout."""
    config = VerifierConfig(timeout_s=FAST_TIMEOUT_S)
    return {name: get_verifier(name, config=config, pool=mv_pool) for name in NAMES}


@pytest.fixture(scope="session")
def patient_verifiers(mv_pool):
    """Every verifier with a long timeout, for answers that sympy decides quickly on an idle host."""
    config = VerifierConfig(timeout_s=PATIENT_TIMEOUT_S)
    return {name: get_verifier(name, config=config, pool=mv_pool) for name in NAMES}
