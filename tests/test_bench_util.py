"""The benchmarks' CPU meter: it must tell a busy window from an idle one,
for this process and for another."""

import os
import subprocess
import sys
import time

from ringflow.benchmark.measure import CpuMeter, process_cpu_seconds


def _spin_cpu(seconds):
    """Burns `seconds` of this process's CPU time, however loaded the host."""
    end = time.process_time() + seconds
    deadline = time.monotonic() + 30
    while time.process_time() < end and time.monotonic() < deadline:
        pass


def _stat_cpu_seconds(pid) -> float:
    """utime + stime from /proc/<pid>/stat: a second, tick-grained account."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_cpu_meter_tells_busy_from_idle():
    meter = CpuMeter({"me": "self"})
    meter.start()
    t0 = time.process_time()
    _spin_cpu(0.2)
    used = time.process_time() - t0
    meter.stop()
    meter.start()
    time.sleep(0.2)
    meter.stop()
    busy, idle = meter.samples["me"]
    # CPU time, not wall time: however loaded the host, the spin used 0.2 s
    # of it and the sleep next to none.  How exact the meter is belongs to
    # a benchmark, not here.
    assert used >= 0.2 and busy > 0 and idle < busy / 2, (busy, idle, used)


def test_cpu_of_another_process():
    child = subprocess.Popen([sys.executable, "-c", "import sys\nwhile True: pass"])
    try:
        time.sleep(0.1)
        before, stat_before = process_cpu_seconds(child.pid), _stat_cpu_seconds(child.pid)
        deadline = time.monotonic() + 30  # until it has run 0.3 s, however loaded the host
        while _stat_cpu_seconds(child.pid) - stat_before < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        spent = process_cpu_seconds(child.pid) - before
        stat_spent = _stat_cpu_seconds(child.pid) - stat_before
    finally:
        child.kill()
        child.wait()
    assert stat_spent >= 0.3 and abs(spent - stat_spent) < 0.05 + 0.1 * stat_spent, (spent, stat_spent)


def _thp_fallbacks() -> int:
    """Huge-page faults the kernel had to serve with small pages (no huge
    page free), so far."""
    for line in open("/proc/vmstat"):
        if line.startswith("thp_fault_fallback "):
            return int(line.split()[1])
    return 0


def test_hugepage_buffers_are_advised_and_get_huge_pages():
    import pytest
    import torch

    from ringflow.benchmark.memory import hugepage_empty, huge_page_fraction, smaps_fields, thp_mode

    if thp_mode() not in ("always", "madvise"):
        pytest.skip(f"transparent huge pages are {thp_mode()} here")
    fallbacks = _thp_fallbacks()
    x = hugepage_empty(torch, 3 << 20, torch.float32)  # 12 MiB: six huge pages
    assert x.data_ptr() % (2 << 20) == 0 and x.numel() == 3 << 20
    assert "hg" in smaps_fields(x.data_ptr())["VmFlags"].split()  # MADV_HUGEPAGE covers it
    x.fill_(1.0)
    # Some huge pages, unless the kernel had none free (it counts that).
    assert huge_page_fraction(x) > 0 or _thp_fallbacks() > fallbacks
    # The advice covers the tensor and no more: the byte after it is still in
    # the same anonymous mapping (hugepage_empty maps a huge page extra) and
    # is not advised.  (Not a fresh torch tensor: numpy advises its arrays of
    # 4 MiB and more, and malloc may give that memory to torch once an
    # earlier test in this process has freed them; CI once saw it.)
    after = smaps_fields(x.data_ptr() + x.numel() * x.element_size())
    assert after and "hg" not in after["VmFlags"].split(), after


def test_memory_bound_is_the_busbw_of_moving_every_byte_once():
    from ringflow.benchmark.allreduce import memory_bound_busbw
    from ringflow.benchmark.measure import bandwidths

    for world in (2, 3, 4, 8):
        size, copy_gbps = 16 << 20, 36.0
        fastest = 2 * world * size / (copy_gbps * 1e9)  # n inputs read + n outputs written
        _, busbw = bandwidths("allreduce", world, size, fastest)
        assert abs(memory_bound_busbw(copy_gbps, world) - busbw) < 1e-9 * busbw, world


def test_memory_bandwidth_counts_only_repetitions_where_ranks_ran_together():
    from ringflow.benchmark.allreduce import MEMORY_BYTES, memory_gbps

    size = 16 << 20
    both = 2 * 2 * MEMORY_BYTES / 1e9  # GB moved by both ranks
    # 1: together, the slower took 0.010.  2: one after the other (skewed by
    # the barrier, or taking turns), each 0.004 alone: not concurrent.
    # 3: together, 0.008 -- the fastest that counts.
    per_rank = [{"memory_spans": {size: [(1.000, 1.010), (2.000, 2.004), (3.000, 3.008)]}},
                {"memory_spans": {size: [(1.0005, 1.0095), (2.004, 2.008), (3.0002, 3.0078)]}}]
    got = memory_gbps(per_rank, 2, size)
    assert abs(got - both / 0.008) < 1e-6 * got
    # No repetition together: all bytes over the joint span, the fastest.
    turns = [{"memory_spans": {size: [(1.000, 1.004), (2.000, 2.005)]}},
             {"memory_spans": {size: [(1.004, 1.008), (2.005, 2.010)]}}]
    got = memory_gbps(turns, 2, size)
    assert abs(got - both / 0.008) < 1e-6 * got
    assert memory_gbps(per_rank, 2, 64 << 20) is None
