"""Resource meter: CPU seconds, wall seconds, peak RSS of this process and of a child."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import psutil

from devices.meters import ResourceMeter, ResourceUsage, kernel_peak_rss_mb, self_peak_rss_mb


def _burn_cpu(seconds: float = 0.05) -> float:
    # At least a few clock ticks (10 ms each): psutil's cpu_times counts whole ticks, so a fixed
    # loop of ~9 ms on a fast core sometimes counted 0.
    total, start = 0.0, time.process_time()
    while time.process_time() - start < seconds:
        for i in range(10_000):
            total += i * 0.5
    return total


def test_meter_counts_cpu_work_and_a_memory_peak():
    # Prepare
    meter = ResourceMeter().start()
    before = meter.sample()
    # The peak is a lifetime high-water mark: compare against the resident size right now,
    # not against an earlier peak that a long test session may have left far above it.
    rss_now_mb = psutil.Process().memory_info().rss / (1024 * 1024)
    # Execute: ~0.1 s of CPU and a 64 MB allocation that is freed again
    _burn_cpu()
    block = np.ones(64 * 1024 * 1024 // 8)
    peak_during = meter.sample().peak_rss_mb
    del block
    usage = meter.stop()
    # Assert
    assert usage.cpu_s > before.cpu_s
    assert usage.wall_s > before.wall_s
    assert usage.peak_rss_mb >= peak_during >= rss_now_mb + 60


def test_peak_rss_of_another_process_comes_from_the_kernel():
    # Prepare: a child that touches ~80 MB then sleeps until stdin closes
    code = ("import sys; b = bytearray(80 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); "
            "del b; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        meter = ResourceMeter(child.pid).start()
        # Execute
        usage = meter.stop()
        # Assert: the peak survives the buffer being freed
        assert usage.peak_rss_mb >= 80
        assert kernel_peak_rss_mb(child.pid) == usage.peak_rss_mb
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def test_self_peak_agrees_with_the_kernel_high_water_mark():
    import os

    kernel = kernel_peak_rss_mb(os.getpid())
    assert kernel is not None
    assert abs(self_peak_rss_mb() - kernel) < 2.0


def test_kernel_peak_is_none_where_proc_lacks_it(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "status").write_text("Name:\tx\nVmRSS:\t100 kB\n")
    assert kernel_peak_rss_mb(42, proc_root=tmp_path) is None
    assert kernel_peak_rss_mb(43, proc_root=tmp_path) is None


def test_usage_to_dict_includes_total_cpu():
    usage = ResourceUsage(wall_s=2.0, cpu_user_s=1.25, cpu_sys_s=0.5, peak_rss_mb=50.0)
    assert usage.to_dict() == {"wall_s": 2.0, "cpu_user_s": 1.25, "cpu_sys_s": 0.5,
                               "peak_rss_mb": 50.0, "peak_uss_mib": 0.0, "peak_pss_mib": 0.0,
                               "cpu_s": 1.75}


def test_memory_detail_counts_pages_shared_with_a_forked_child_out_of_uss():
    # Prepare: 64 MiB touched before fork are shared (copy-on-write) by parent and child.
    import os
    import signal

    block = bytearray(64 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    child = os.fork()
    if child == 0:  # the child only sleeps; it never writes the shared block
        signal.pause()
        os._exit(0)
    try:
        # Execute
        usage = ResourceMeter(child, memory_detail=True).start().sample()
        plain = ResourceMeter(child).start().sample()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    # Assert: RSS counts the shared block, USS does not; PSS shares it out (half each).
    assert usage.peak_rss_mb > 64
    assert usage.peak_uss_mib < usage.peak_rss_mb - 60
    assert usage.peak_uss_mib < usage.peak_pss_mib < usage.peak_rss_mb
    assert plain.peak_uss_mib == 0.0 and plain.peak_pss_mib == 0.0
    del block


def test_context_manager_keeps_the_last_usage():
    with ResourceMeter() as meter:
        _burn_cpu()
    assert meter.usage is not None and meter.usage.cpu_s > 0
