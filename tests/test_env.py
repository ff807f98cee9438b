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
    """Where the error shows depends on when the setting is read: while the
    group is built, or at the first call (then again at the next one, as a
    setting read into a static is read again after a failure)."""
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
    ("RINGFLOW_INLINE_BYTES", "abc", {}),          # read by the calling thread at each call
    ("RINGFLOW_INLINE_BYTES", "-1", {}),           # used to mean "inline every size"
    ("RINGFLOW_WARN_MS", "-x", {}),                # read while the communicator is built
    ("RINGFLOW_TRACE", "maybe", {}),               # read while the TCP transport is built
    ("RINGFLOW_SHM_ARENA_SPIN_US", "1e99", {}),    # read on the op thread by the shm allreduce
    ("RINGFLOW_PIECE_BYTES", "99999999999999999999999", {"RINGFLOW_ALGO": "ring"}),
    ("RINGFLOW_ALGO", "rign", {}),
])
def test_bad_value_is_named_on_every_rank(name, value, more):
    results = run_world(2, bad_setting, env={name: value, **more}, timeout=60)
    for rank, errors in enumerate(results):
        for is_value_error, kind, msg in errors:
            assert kind is not None, f"rank {rank}: {name}={value!r} was accepted"
            assert f"{name}='{value}'" in msg, f"rank {rank}: {kind}: {msg}"
            # A rank's own bad setting is a ValueError; a peer's arrives as
            # that peer's failure (PeerError), naming it just the same.
            assert is_value_error or kind == "PeerError", f"rank {rank}: {kind}: {msg}"


def test_bad_value_read_during_the_rendezvous_is_named():
    """RINGFLOW_SHM_SPIN_US is read when the shm transport is built, between
    uses of torch's store.  The rank that fails first names it; a slower peer
    may instead see the store go away (rank 0 hosts it, and torch drops it
    when init_process_group raises), but no rank hangs or crashes."""
    results = run_world(2, bad_setting, env={"RINGFLOW_SHM_SPIN_US": "50us"}, timeout=60)
    errors = [e for rank_errors in results for e in rank_errors]
    assert all(kind is not None for _, kind, _ in errors), errors
    assert any("RINGFLOW_SHM_SPIN_US='50us'" in msg for _, _, msg in errors), errors


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
