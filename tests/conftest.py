import os
import sys

# Let `import worlds` work from every test module and from forked children.
sys.path.insert(0, os.path.dirname(__file__))

import signal

import pytest

# Every test, in-process ones included, ends within this many seconds: a hang
# fails with a traceback of where it hung instead of stalling the suite.
# Generous, because the multi-process tests carry their own, shorter
# deadlines (worlds.run_world) and the suite may share a loaded host.
TEST_TIMEOUT_S = 900


def _timed_out(signum, frame):
    raise TimeoutError(f"test exceeded {TEST_TIMEOUT_S} s (tests/conftest.py)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _simd_levels():
    from ringflow import _C

    return ["scalar"] + (["avx2"] if _C.kernels.detected_simd_level() != "scalar" else [])


@pytest.fixture(params=_simd_levels())
def simd_level(request):
    """Runs a test at each SIMD level this CPU has (the kernels' one level,
    which every kernel, intrinsic or plain loop, dispatches on)."""
    from ringflow import _C

    detected = _C.kernels.detected_simd_level()
    assert _C.kernels.set_simd_level(request.param) == request.param
    yield request.param
    _C.kernels.set_simd_level(detected)
