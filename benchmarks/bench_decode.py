"""Prefill and decode speed of whole models, per compute variant and thread count, and the
process's anonymous memory (weights must stay memory-mapped, not copied).

    python benchmarks/bench_decode.py [MODEL.gguf ...] [--requantize q8_0] [--prompt 128]
                                      [--decode 128]

Default models: SmolLM2-135M-Instruct Q4_1 (fetched with ../shared/tools/fetch-model.sh) and
the same model requantized by pyfoundry to Q8_0.  For each model, variant (f32, q8) and thread
count (1, 2): prefill of --prompt tokens in one batch, then --decode tokens one at a time
(greedy), tokens/s as the median of --repeat runs.  Each model and variant runs in a fresh
process; RssAnon is read from /proc/self/status after the runs, and the model's share of it
(RssAnon after minus RssAnon before the model was opened) is compared with its budget: KV cache
+ activations + 10% of the file size + the interleaved weight copies the q8 variant makes for
its decode GEMV (Model.packed_bytes: the q8 variant's copies of Q4_0 and Q4_1 weights on CPUs
with AVX2, FMA and F16C, the f32 variant's of Q4_0, Q4_1 and Q8_0 weights on CPUs with AMX).
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import pyfoundry as pf
from common import fetch_smollm2

HERE = pathlib.Path(__file__).resolve().parent


def rss_anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def run(model, prompt, n_decode, repeat):
    pre, dec = [], []
    for _ in range(repeat):
        model.reset()
        t0 = time.perf_counter()
        logits = model.forward(prompt, 0, logits="last")
        pre.append(len(prompt) / (time.perf_counter() - t0))
        tok = int(np.argmax(logits))
        t0 = time.perf_counter()
        for _ in range(n_decode):
            tok = int(np.argmax(model.forward([tok], logits="last")))
        dec.append(n_decode / (time.perf_counter() - t0))
    return statistics.median(pre), statistics.median(dec)


def measure(path, variant, threads, args):
    """One model x variant in this process: returns rows of results."""
    base = rss_anon()
    m = pf.Model(path, variant=variant)
    rng = np.random.default_rng(0)
    prompt = list(rng.integers(3, m.vocab_size, args.prompt))
    rows = []
    for t in threads:
        pf.set_num_threads(t)
        pre, dec = run(m, prompt, args.decode, args.repeat)
        acts = 4 * sum(w for _, w in m.plan.buffers.values()) * args.prompt
        budget = m.kv_bytes + acts + 0.10 * os.path.getsize(path) + m.packed_bytes
        rows.append((t, pre, dec, rss_anon(), rss_anon() - base, budget))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*")
    ap.add_argument("--requantize", default="q8_0",
                    help="also benchmark the first model requantized to this policy ('' = no)")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.models[0], args.variant,
                                 [int(x) for x in args.threads.split(",")], args)))
        return
    if not args.models:
        smol = fetch_smollm2()
        if smol is None:
            sys.exit("could not fetch SmolLM2; pass MODEL paths")
        args.models = [smol]
    models = list(args.models)
    tmp = tempfile.TemporaryDirectory()
    if args.requantize:
        dst = os.path.join(tmp.name, f"requantized-{args.requantize}.gguf")
        pf.testing.requantize_model(models[0], dst, args.requantize)
        models.append(dst)
    print(f"# {time.strftime('%Y-%m-%d')}; prefill {args.prompt} tokens, decode {args.decode}; "
          f"median of {args.repeat}")
    hdr = (f"{'model':<34} {'variant':<7} {'thr':>3} {'prefill tok/s':>13} {'decode tok/s':>12} "
           f"{'RssAnon MiB':>11} {'model MiB':>11} {'budget MiB':>10}")
    print(hdr)
    print("-" * len(hdr))
    threads = [int(x) for x in args.threads.split(",")]
    for path in models:
        for variant in ("f32", "q8"):
            if args.child:
                rows = measure(path, variant, threads, args)
            else:  # a fresh process per model and variant, so RssAnon is this model's
                cmd = [sys.executable, __file__, path, "--requantize", "", "--child",
                       "--prompt", str(args.prompt), "--decode", str(args.decode),
                       "--repeat", str(args.repeat), "--threads", args.threads,
                       "--variant", variant]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode:
                    sys.exit(r.stderr)
                rows = json.loads(r.stdout.strip().splitlines()[-1])
            name = pathlib.Path(path).name[:34]
            for t, pre, dec, ra, delta, budget in rows:
                ok = "ok" if delta <= budget else "OVER"
                print(f"{name:<34} {variant:<7} {t:>3} {pre:13.1f} {dec:12.1f} "
                      f"{ra / 2**20:11.1f} {delta / 2**20:11.1f} {budget / 2**20:10.1f} {ok}")


if __name__ == "__main__":
    main()
