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


def test_hugepage_buffers_are_backed_by_huge_pages():
    import pytest
    import torch

    from ringflow._bench_util import hugepage_empty, huge_page_fraction, thp_mode

    if thp_mode() not in ("always", "madvise"):
        pytest.skip(f"transparent huge pages are {thp_mode()} here")
    x = hugepage_empty(torch, 3 << 20, torch.float32)  # 12 MiB: six huge pages
    assert x.data_ptr() % (2 << 20) == 0 and x.numel() == 3 << 20
    x.fill_(1.0)
    assert huge_page_fraction(x) > 0.5
    y = torch.ones(3 << 20)  # small pages, unless THP is 'always'
    if thp_mode() == "madvise":
        assert huge_page_fraction(y) == 0.0
