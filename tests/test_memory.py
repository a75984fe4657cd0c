import subprocess
import sys
import textwrap

import pytest

from lab import memory

MB = 2**20

# 64 chunks of 1 MB: once the first free raised glibc's mmap threshold, they come from its heap, and a freed
# heap stays resident, so a later call reuses it without growing the RSS unless flush() trims it.
TRANSIENT = textwrap.dedent("""
    import psutil, torch
    from lab import memory

    def call():
        chunks = [torch.ones(256 * 1024) for _ in range(64)]
        return sum(float(c[0]) for c in chunks)

    call(), call()
    memory.flush()
    before = psutil.Process().memory_info().rss
    call()
    print((memory.peak_rss_bytes() - before) / 2**20)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and malloc_trim are Linux/glibc")
def test_a_call_that_reuses_freed_heap_still_shows_its_transient_memory():
    done = subprocess.run([sys.executable, "-c", TRANSIENT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) > 48  # a fresh process: the heap state is the one described above


def test_model_peak_is_weights_plus_the_calls_growth():
    assert memory.model_peak_mb(100 * MB, peak_rss_mb=900.0, rss_before_mb=850.0) == pytest.approx(150.0)
    assert memory.model_peak_mb(100 * MB, peak_rss_mb=800.0, rss_before_mb=850.0) == pytest.approx(100.0)
    assert memory.model_peak_mb(100 * MB, peak_rss_mb=None, rss_before_mb=850.0) is None
    assert memory.model_peak_mb(100 * MB, 900.0, 850.0, peak_cuda_mb=1234.0) == 1234.0
