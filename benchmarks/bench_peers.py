"""pyfoundry against llama.cpp on the same GGUF files, same machine, same threads, same run.

    pip install ".[peers]"          # llama-cpp-python, built from source for this CPU
    python benchmarks/bench_peers.py [MODEL.gguf ...] [--threads 1,2] [--prompt 128]
                                     [--decode 128] [--repeat 3] [--no-synthetic] [--no-f32]

Default set: SmolLM2-135M-Instruct Q4_1 (../shared/tools/fetch-model.sh smollm2), the same
model requantized by pyfoundry to Q8_0, Q4_0 and Q4_K, and synthetic llama-shaped models of
about 1B parameters (dim 2048, 16 layers, 32/8 heads, FFN 8192, vocab 32000) in Q4_0, Q8_0 and
Q4_K, written to a temporary folder.  For each file and thread count both engines run
(pyfoundry's q8 variant, which pairs activations with weights as llama.cpp's CPU backend does;
llama.cpp through llama-cpp-python): prefill of a --prompt-token prompt in one
batch, then --decode tokens one at a time.  Printed: tokens/s of both (median of --repeat),
the ratio, and the decode bandwidth bound: bytes read per token (every weight once) over the
read bandwidth (column GB/s: the mean of the read probe taken just before and just after that
file's runs, as the machine's bandwidth moves within a run), with each engine's decode as a
percentage of it.
Unless --no-f32, pyfoundry's f32 variant decodes too, and its time is given relative to the q8
variant's.  The engines take turns within each repeat (one model of each kept open), with a
quarter-second pause before each turn so that the other engine's workers have stopped
spinning.

On CPUs with AMX (Intel Xeon since Sapphire Rapids) a llama-cpp-python built for the CPU
includes llama.cpp's AMX matmul, which on some machines crashes the process at the first batch
of more than one token (llama.cpp issue 20824).  The script stops with the rebuild command
(AMX off, the AVX-512 kernels kept) when the installed build has AMX, unless --allow-amx.
"""
import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

import pyfoundry as pf
from common import fetch_smollm2, probe_buffer, read_bandwidth

HERE = pathlib.Path(__file__).resolve().parent
SETTLE_S = 0.25  # idle time before each engine's turn
AMX_MESSAGE = """\
This llama-cpp-python was built with llama.cpp's AMX matmul, which crashes on some machines at
the first batch of more than one token (llama.cpp issue 20824).  Rebuild it without AMX:

  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \\
    -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON \\
    -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" \\
    pip install --force-reinstall --no-deps --no-cache-dir llama-cpp-python

(drop the flags this CPU lacks), or pass --allow-amx to run it as it is."""


def has_amx(llama_cpp):
    """whether this llama-cpp-python build includes llama.cpp's AMX kernels (its system info
    line lists the features it was built with, e.g. '... | AMX_INT8 = 1 | ...')"""
    info = llama_cpp.llama_print_system_info()
    if isinstance(info, bytes):
        info = info.decode(errors="replace")
    return any(f.strip().startswith("AMX") and f.strip().endswith("= 1") for f in info.split("|"))


def weight_bytes(path):
    with pf.open(path) as f:
        return sum(t.nbytes for t in f.tensors.values()
                   if len(t.shape) == 2 and t.name != "token_embd.weight") + \
            (f.tensors["token_embd.weight"].nbytes if "output.weight" not in f.tensors else 0)


def timed_run(prefill, step, prompt, n_decode):
    """prefill(prompt), then n_decode greedy steps step(token), each call returning the last
    token's logits: (prefill tok/s, decode tok/s)."""
    t0 = time.perf_counter()
    lg = prefill(prompt)
    pre = len(prompt) / (time.perf_counter() - t0)
    tok = int(np.argmax(lg))
    t0 = time.perf_counter()
    for _ in range(n_decode):
        tok = int(np.argmax(step(tok)))
    return pre, n_decode / (time.perf_counter() - t0)


class PfRunner:
    """pyfoundry on one file: one timed prefill + decode per call of run()."""

    def __init__(self, path, threads, variant, n_ctx):
        self.threads = threads
        pf.set_num_threads(threads)
        self.m = pf.Model(path, variant=variant, context_length=n_ctx)

    def run(self, prompt, n_decode):
        pf.set_num_threads(self.threads)
        m = self.m
        m.reset()
        return timed_run(lambda p: m.forward(p, 0, logits="last"),
                         lambda t: m.forward([t], logits="last"), prompt, n_decode)

    def close(self):
        self.m = None


class LlamaRunner:
    """llama.cpp (llama-cpp-python) on one file, the same calls as PfRunner."""

    def __init__(self, path, threads, n_ctx, n_batch):
        import llama_cpp
        from llama_cpp import Llama
        self.llama_cpp = llama_cpp
        self.llm = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads,
                         n_ctx=n_ctx, n_batch=n_batch, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def eval(self, tokens):  # evaluate, then the last token's logits straight from llama.cpp
        self.llm.eval(tokens)
        ptr = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def run(self, prompt, n_decode):
        self.llm.reset()
        return timed_run(self.eval, lambda t: self.eval([t]), prompt, n_decode)

    def close(self):
        self.llm.close()


def measure(path, threads, prompt, n_decode, repeat, f32):
    """Medians of prefill and decode tok/s: pyfoundry q8, llama.cpp (and pyfoundry f32 when
    asked), the engines taking turns within each repeat so that a noisy spell hits them alike."""
    n_ctx = len(prompt) + n_decode + 8
    runners = {"q8": PfRunner(path, threads, "q8", n_ctx),
               "llama": LlamaRunner(path, threads, n_ctx, len(prompt))}
    if f32:
        runners["f32"] = PfRunner(path, threads, "f32", n_ctx)
    res = {k: ([], []) for k in runners}
    try:
        for _ in range(repeat):
            for k, r in runners.items():
                time.sleep(SETTLE_S)  # the other engine's workers stop spinning first
                pre, dec = r.run(prompt, n_decode)
                res[k][0].append(pre)
                res[k][1].append(dec)
    finally:
        for r in runners.values():
            r.close()
    return {k: (statistics.median(p), statistics.median(d)) for k, (p, d) in res.items()}


def default_files(tmp, synthetic):
    files = []
    smol = fetch_smollm2()
    if smol:
        files.append(smol)
        for p in ("q8_0", "q4_0", "q4_k"):
            files.append(pf.testing.requantize_model(smol, os.path.join(tmp, f"smollm2-{p}.gguf"), p))
    else:
        print("# SmolLM2 could not be fetched; skipped", file=sys.stderr)
    if synthetic:
        for p in ("q4_0", "q8_0", "q4_k"):
            files.append(pf.testing.synthetic_model(
                os.path.join(tmp, f"synthetic-1b-{p}.gguf"), "llama", p, dim=2048, n_layers=16,
                n_heads=32, n_kv_heads=8, ffn_dim=8192, vocab_size=32000, context_length=4096))
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-synthetic", action="store_true", help="skip the 1B synthetic models")
    ap.add_argument("--no-f32", action="store_true",
                    help="skip the f32 variant's decode (column 'f32 dec' and its time ratio)")
    ap.add_argument("--allow-amx", action="store_true",
                    help="run a llama-cpp-python built with AMX (see above) as it is")
    args = ap.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install '.[peers]'")
    if not args.allow_amx and has_amx(llama_cpp):
        sys.exit(AMX_MESSAGE)
    tmp = tempfile.TemporaryDirectory()
    files = args.models or default_files(tmp.name, not args.no_synthetic)
    threads = [int(t) for t in args.threads.split(",")]
    probe = probe_buffer()
    bw = {t: read_bandwidth(t, buf=probe) for t in threads}
    print(f"# {time.strftime('%Y-%m-%d')}; pyfoundry q8 variant vs llama.cpp "
          f"(llama-cpp-python {llama_cpp.__version__}); prompt {args.prompt}, decode "
          f"{args.decode}; median of {args.repeat}")
    print("# read bandwidth: " + ", ".join(f"{t} thread(s) {bw[t]:.1f} GB/s" for t in threads))
    f32 = not args.no_f32
    hdr = (f"{'model':<28} {'thr':>3} {'prefill pf':>10} {'llama.cpp':>9} {'ratio':>6} "
           f"{'decode pf':>9} {'llama.cpp':>9} {'ratio':>6} {'bound tok/s':>11} "
           f"{'GB/s':>5} {'pf%':>4} {'ll%':>4}" + (f" {'f32 dec':>8} {'f32/q8 t':>8}" if f32 else ""))
    print(hdr)
    print("-" * len(hdr))
    rng = np.random.default_rng(0)
    rows = []
    for path in files:
        with pf.open(path) as f:
            vocab = f.tensors["token_embd.weight"].shape[0]
        prompt = [1] + [int(x) for x in rng.integers(3, min(vocab, 30000), args.prompt - 1)]
        wb = weight_bytes(path)
        for t in threads:
            r = measure(path, t, prompt, args.decode, args.repeat, f32)
            # the probe before (the last one taken) and right after this file's runs, averaged:
            # the machine's bandwidth moves within a run, and a bound from the start alone
            # misreads a slow spell
            after = read_bandwidth(t, buf=probe)
            gbs = (bw[t] + after) / 2
            bw[t] = after
            (ppre, pdec), (lpre, ldec) = r["q8"], r["llama"]
            bound = gbs * 1e9 / wb
            name = pathlib.Path(path).name[:28]
            line = (f"{name:<28} {t:>3} {ppre:10.1f} {lpre:9.1f} {ppre / lpre:6.2f} "
                    f"{pdec:9.1f} {ldec:9.1f} {pdec / ldec:6.2f} {bound:11.1f} {gbs:5.1f} "
                    f"{100 * pdec / bound:4.0f} {100 * ldec / bound:4.0f}")
            row = {"t": t, "pre": ppre / lpre, "dec": pdec / ldec, "ll_bound": ldec / bound}
            if f32:
                row["f32"] = pdec / r["f32"][1]
                line += f" {r['f32'][1]:8.1f} {row['f32']:8.2f}"
            rows.append(row)
            print(line, flush=True)
    print("# pf% / ll%: decode as a percentage of the bound; f32/q8 t: the f32 variant's "
          "decode time over the q8 variant's")
    two = [r for r in rows if r["t"] == 2]
    if two:
        print(f"# targets at 2 threads: decode >= 1.2x on {sum(r['dec'] >= 1.2 for r in two)} "
              f"of {len(two)} files (1.2x llama.cpp is above the bound on "
              f"{sum(1.2 * r['ll_bound'] > 1.0 for r in two)}); prefill >= 1.0x on "
              f"{sum(r['pre'] >= 1.0 for r in two)} of {len(two)}"
              + (f"; f32 decode within 1.5x of q8 on {sum(r['f32'] <= 1.5 for r in two)} of "
                 f"{len(two)}" if f32 else ""))


if __name__ == "__main__":
    main()
