"""GEMV speed against the machine's memory read bandwidth, measured in the same run.

    python benchmarks/bench_gemv.py [--policies f16,q8_0,q4_0,q4_k,q6_k] [--rows 4096]
                                    [--cols 4096] [--repeat 7]

For each format: a 4096 x 4096 weight, M = 1, with 1 and 2 threads, in both compute variants
("f32": dequantize + float dots; "q8": activations quantized as llama.cpp does + integer
dots).  The script cycles through enough distinct weights that their total is several times
the last-level cache, so every call streams its weight from DRAM.  It prints weight GB/s
(weight bytes / time, median over the cycle) and that figure as a fraction of the read
bandwidth measured in the same run with the same thread count (a 1 GiB buffer streamed with
wide loads by the core's thread pool, pyfoundry._core.bench_read).
Target: >= 70% for Q8_0 and Q4_0 in the q8 variant with 2 threads.

It also prints the per-call overhead of a tiny step called from Python (target < 10 us).
"""
import argparse
import os
import statistics
import time

import numpy as np

import pyfoundry as pf
from common import cpu_name, read_bandwidth


def llc_bytes():
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in os.listdir(base):
            try:
                with open(os.path.join(base, d, "size")) as f:
                    s = f.read().strip()
                mult = {"K": 1024, "M": 1 << 20}.get(s[-1], 1)
                best = max(best, int(s.rstrip("KM")) * mult)
            except (OSError, ValueError):
                pass
    except OSError:
        pass
    return best or 32 << 20


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="f16,q8_0,q4_0,q4_k,q6_k")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=7, help="passes over the weight cycle")
    ap.add_argument("--cache-multiple", type=float, default=4.0,
                    help="weights cycled through, as a multiple of the last-level cache")
    args = ap.parse_args()

    llc = llc_bytes()
    rng = np.random.default_rng(0)
    base = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    x = rng.standard_normal(args.cols).astype(np.float32)
    n0 = pf.get_num_threads()
    print(f"# {cpu_name()}; {os.cpu_count()} CPUs; last-level cache {llc >> 20} MiB; "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"# GEMV {args.rows}x{args.cols}, M=1; weights cycled: >= {args.cache_multiple:g}x "
          f"LLC; median of {args.repeat} passes")
    bw = {t: read_bandwidth(t, 1 << 30, 5) for t in (1, 2)}
    for t in (1, 2):
        print(f"# memory read bandwidth, {t} thread(s): {bw[t]:.1f} GB/s")
    hdr = f"{'policy':<7} {'variant':<7} {'threads':>7} {'ms/call':>8} {'GB/s':>7} {'% of bw':>8}"
    print(hdr)
    print("-" * len(hdr))
    for name in args.policies.split(","):
        p = pf.policy(name.strip())
        one = pf.Tensor.from_numpy(base, p)
        n_copies = max(2, int(np.ceil(args.cache_multiple * llc / one.nbytes)))
        ws = [one] + [pf.Tensor(one.name, one.shape, p, one.raw.copy()) for _ in range(n_copies - 1)]
        for variant in ("f32", "q8"):
            step = pf.compile("matmul", policy=p, variant=variant)
            for t in (1, 2):
                pf.set_num_threads(t)
                out = np.empty(args.rows, np.float32)
                for w in ws[:2]:
                    step(x, w, out=out)  # warm up
                times = []
                for _ in range(args.repeat):
                    for w in ws:
                        t0 = time.perf_counter()
                        step(x, w, out=out)
                        times.append(time.perf_counter() - t0)
                med = statistics.median(times)
                gbs = one.nbytes / med / 1e9
                print(f"{p.name:<7} {variant:<7} {t:>7} {med * 1e3:8.3f} {gbs:7.2f} "
                      f"{100 * gbs / bw[t]:7.1f}%")
        del ws
    pf.set_num_threads(n0)

    # per-call overhead of a tiny step
    tiny = pf.compile("add")
    a = np.ones(4, np.float32)
    o = np.empty(4, np.float32)
    for _ in range(1000):
        tiny(a, a, out=o)
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        tiny(a, a, out=o)
    us = (time.perf_counter() - t0) / n * 1e6
    print(f"\nper-call overhead of a tiny step (add of 4 floats, out= given): {us:.2f} us")


if __name__ == "__main__":
    main()
