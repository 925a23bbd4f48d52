"""Pieces the benchmark scripts share: the machine's name, its read bandwidth measured on the
kernels' own thread pool, and the path of the SmolLM2 model fetched by
../shared/tools/fetch-model.sh."""
import pathlib
import statistics
import subprocess
import time

import numpy as np

import pyfoundry as pf

HERE = pathlib.Path(__file__).resolve().parent


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def read_bandwidth(threads, total_bytes=1 << 30, repeat=5, buf=None):
    """GB/s of streaming a large buffer with wide loads (XOR-reduce) on `threads` threads of
    the core's pool (pyfoundry._core.bench_read): the read bandwidth a streaming kernel can
    hope for.  Median of `repeat` passes after a warm-up.  `buf` (an int64 array, e.g. from
    probe_buffer) is streamed instead of a new one of total_bytes."""
    if buf is None:
        buf = probe_buffer(total_bytes)
    n0 = pf.get_num_threads()
    pf.set_num_threads(threads)
    try:
        pf._core.bench_read(buf)  # warm up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            pf._core.bench_read(buf)
            times.append(time.perf_counter() - t0)
    finally:
        pf.set_num_threads(n0)
    return buf.nbytes / statistics.median(times) / 1e9


def probe_buffer(total_bytes=1 << 30):
    """the int64 buffer read_bandwidth streams (random, so no page is shared or zero)"""
    return np.random.default_rng(1).integers(0, 2**63, total_bytes // 8, dtype=np.int64)


def fetch_smollm2():
    """The path of SmolLM2-135M-Instruct Q4_1, fetched on first use; None when it cannot be."""
    script = HERE.parent.parent / "shared" / "tools" / "fetch-model.sh"
    if not script.exists():
        return None
    r = subprocess.run(["bash", str(script), "smollm2"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return None
    return r.stdout.strip().splitlines()[-1]
