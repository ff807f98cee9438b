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
