"""RINGFLOW_* settings: a malformed or out-of-range value is an error that
names the variable and the value, on every rank, without a crash or a hang;
well-formed values keep their meaning."""

import pytest

from worlds import init_torch, run_world

TIMEOUT_S = 20


def _error_of(fn):
    """Runs fn; returns (is a ValueError, exception class name, message)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return isinstance(e, ValueError), type(e).__name__, str(e)
    return False, None, ""


def bad_setting(rank, size):
    """Every setting is checked while the group is built, before the store is
    used (_C.check_settings); should one slip through, the first call shows
    it, and the next again (a static is read again after a failure)."""
    import torch

    group = []
    at_init = _error_of(lambda: group.append(init_torch(rank, size, timeout_s=TIMEOUT_S)))
    if not group:
        return [at_init]
    dist = group[0]
    calls = [_error_of(lambda: dist.all_reduce(torch.ones(64))) for _ in range(2)]
    dist.destroy_process_group()
    return calls


@pytest.mark.parametrize("name, value, more", [
    ("RINGFLOW_INLINE_BYTES", "abc", {}),          # used at each blocking call
    ("RINGFLOW_INLINE_BYTES", "-1", {}),           # used to mean "inline every size"
    ("RINGFLOW_WARN_MS", "-x", {}),                # used by the communicator's watchdog
    ("RINGFLOW_TRACE", "maybe", {}),               # used on transport progress threads
    ("RINGFLOW_SHM_ARENA_SPIN_US", "1e99", {}),    # used on the op thread by the shm allreduce
    ("RINGFLOW_PIECE_BYTES", "99999999999999999999999", {"RINGFLOW_ALGO": "ring"}),
    ("RINGFLOW_ALGO", "rign", {}),
    ("RINGFLOW_SHM_SPIN_US", "50us", {}),          # used by the shm transport, built mid-rendezvous
    ("RINGFLOW_SHM_QUEUE_BYTES", "1M", {}),        # read in Python
    ("RINGFLOW_SHM", "maybe", {}),                 # read in Python; used to mean "on"
    ("RINGFLOW_SHM_CMA", "nope", {}),              # likewise
    ("RINGFLOW_SHM_HUGEPAGES", "2", {}),           # used by the shm allreduce's large calls
    ("RINGFLOW_AGG_SLOTS", "0", {}),               # used only by RINGFLOW_ALGO=aggregate calls
    ("RINGFLOW_SIMD", "avx3", {}),
])
def test_bad_value_is_named_at_init_on_every_rank(name, value, more):
    results = run_world(2, bad_setting, env={name: value, **more}, timeout=60)
    for rank, errors in enumerate(results):
        assert len(errors) == 1, f"rank {rank}: init went through: {errors}"
        is_value_error, kind, msg = errors[0]
        assert is_value_error, f"rank {rank}: {kind}: {msg}"
        assert f"{name}='{value}'" in msg, f"rank {rank}: {kind}: {msg}"


def good_settings(rank, size):
    import torch

    import ringflow

    dist = init_torch(rank, size, timeout_s=TIMEOUT_S)
    x = torch.arange(100_000, dtype=torch.float32)
    dist.all_reduce(x)
    warn_ms = ringflow.stats()["warn_ms"]
    dist.destroy_process_group()
    return x[:3].tolist(), warn_ms


def test_well_formed_values_keep_their_meaning():
    env = {"RINGFLOW_INLINE_BYTES": " 4096 ",   # blanks around a number are fine
           "RINGFLOW_PIECE_BYTES": "10",        # below 64: the default, as before
           "RINGFLOW_SHM_ARENA_SPIN_US": "0",   # 0: the default, as before
           "RINGFLOW_TRACE": "off",
           "RINGFLOW_WARN_MS": "2.5e3",
           "RINGFLOW_HIER_MIN_BYTES": ""}       # empty: the default
    for values, warn_ms in run_world(2, good_settings, env=env, timeout=60):
        assert values == [0.0, 2.0, 4.0]
        assert warn_ms == 2500.0
