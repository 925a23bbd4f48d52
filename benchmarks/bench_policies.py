"""Dequantize and quantize throughput of every policy, beside gguf.quants on the same data.

    python benchmarks/bench_policies.py [--rows 1024] [--cols 4096] [--repeat 5]

One thread (the core's policy routines are single-threaded).  Prints million weights per
second (median of --repeat runs) for pyfoundry and gguf.quants, and their ratio.  The
project's target: dequantize at least 20x faster than gguf.quants for every format.
"""
import argparse
import platform
import statistics
import time

import warnings

import numpy as np

import pyfoundry as pf

try:
    import gguf
    import gguf.quants
except ImportError:  # the comparison column is left empty
    gguf = None


def median_time(fn, repeat):
    fn()  # warm up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def gguf_fn(p, what):
    if gguf is None:
        return None
    try:
        qt = gguf.GGMLQuantizationType(p.gguf_type)
    except ValueError:
        return None
    probe_x = np.ones((1, p.block_elems), np.float32)
    try:
        if what == "dequantize":
            gguf.quants.dequantize(np.zeros((1, p.block_bytes), np.uint8), qt)
            return lambda raw: gguf.quants.dequantize(raw, qt)
        gguf.quants.quantize(probe_x, qt)
        return lambda x: gguf.quants.quantize(x, qt)
    except (NotImplementedError, KeyError):
        return None


def main():
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # gguf-py on random blocks
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--gguf-rows", type=int, default=None,
                    help="rows given to gguf.quants (default: the same rows as pyfoundry)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    n = x.size
    print(f"# {platform.processor() or platform.machine()}, {args.rows}x{args.cols} weights, "
          f"1 thread, median of {args.repeat}; Mw/s = million weights per second")
    hdr = (f"{'policy':<8} {'deq pf':>9} {'deq gguf':>9} {'ratio':>7}   "
           f"{'quant pf':>9} {'quant gguf':>10} {'ratio':>7}")
    print(hdr)
    print("-" * len(hdr))
    for p in pf.policies:
        if args.cols % p.block_elems:
            continue
        if p.can_quantize:
            raw = p.quantize(x)
        else:
            raw = rng.integers(0, 256, (args.rows, p.row_bytes(args.cols)), dtype=np.uint8)
        t = median_time(lambda: p.dequantize(raw), args.repeat)
        deq = n / t / 1e6
        g = gguf_fn(p, "dequantize")
        gr = raw[: args.gguf_rows or args.rows]
        gdeq = (gr.shape[0] * args.cols) / median_time(lambda: g(gr), max(1, args.repeat // 2)) / 1e6 if g else None
        qs = gq = None
        if p.can_quantize:
            xs = x[: max(1, args.rows // 8)]
            qs = xs.size / median_time(lambda: p.quantize(xs), args.repeat) / 1e6
            gqf = gguf_fn(p, "quantize")
            if gqf:
                xg = x[: min(args.gguf_rows or args.rows, 64)]
                gq = xg.size / median_time(lambda: gqf(xg), 1) / 1e6

        def f(v):
            return f"{v:9.1f}" if v is not None else f"{'-':>9}"

        def r(a, b):
            return f"{a / b:6.1f}x" if a is not None and b else f"{'-':>7}"
        print(f"{p.name:<8} {f(deq)} {f(gdeq)} {r(deq, gdeq)}   {f(qs)} {f(gq):>10} {r(qs, gq)}")


if __name__ == "__main__":
    main()
