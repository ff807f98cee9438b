"""The benchmarks' CPU meter: it must tell a busy window from an idle one,
for this process and for another."""

import subprocess
import sys
import time

from ringflow._bench_util import CpuMeter, process_cpu_seconds


def _spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_cpu_meter_tells_busy_from_idle():
    meter = CpuMeter({"me": "self"})
    meter.start()
    _spin(0.2)
    meter.stop()
    meter.start()
    time.sleep(0.2)
    meter.stop()
    busy, idle = meter.samples["me"]
    assert 0.12 < busy < 0.4, busy
    assert idle < 0.02, idle


def test_cpu_of_another_process():
    child = subprocess.Popen([sys.executable, "-c", "import sys\nwhile True: pass"])
    try:
        time.sleep(0.1)
        before = process_cpu_seconds(child.pid)
        time.sleep(0.3)
        spent = process_cpu_seconds(child.pid) - before
    finally:
        child.kill()
        child.wait()
    assert 0.1 < spent < 0.45, spent  # one spinning thread, on a shared 2-CPU host


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

    from ringflow._bench_util import hugepage_empty, huge_page_fraction, smaps_fields, thp_mode

    if thp_mode() not in ("always", "madvise"):
        pytest.skip(f"transparent huge pages are {thp_mode()} here")
    fallbacks = _thp_fallbacks()
    x = hugepage_empty(torch, 3 << 20, torch.float32)  # 12 MiB: six huge pages
    assert x.data_ptr() % (2 << 20) == 0 and x.numel() == 3 << 20
    assert "hg" in smaps_fields(x.data_ptr())["VmFlags"].split()  # MADV_HUGEPAGE covers it
    x.fill_(1.0)
    # Some huge pages, unless the kernel had none free (it counts that).
    assert huge_page_fraction(x) > 0 or _thp_fallbacks() > fallbacks
    y = torch.ones(3 << 20)
    assert "hg" not in smaps_fields(y.data_ptr())["VmFlags"].split()
