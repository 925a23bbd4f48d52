"""The portable decode of every policy against its whole-row fast path.

pyfoundry's dequantize goes through a policy's ``dequantize_fast`` when it has one, so the
per-sub-block ``decode`` (the text the GPU back ends compile) is not reached from Python.  This
builds a small C harness against the core sources and checks, for every policy in the
registry, that decoding each sub-block gives the same bits as the fast path, on random block
bytes and on quantized random data.
"""
import shutil
import subprocess

import pytest

from conftest import ROOT

HARNESS = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dialect.h"
#include "policy.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}
static float gauss(void) {
    float u = ((float)(rnd() >> 8) + 0.5f) / 16777216.0f;
    float v = ((float)(rnd() >> 8) + 0.5f) / 16777216.0f;
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

/* equal bits, or both NaN */
static int same(float a, float b) {
    return fdy_float_bits(a) == fdy_float_bits(b) || (isnan(a) && isnan(b));
}

static int compare(const struct fdy_policy *p, const uint8_t *raw, int64_t nb, const char *what) {
    const int64_t n = nb * p->block_elems;
    float *slow = malloc((size_t)n * sizeof(float));
    float *fast = malloc((size_t)n * sizeof(float));
    const int subs = p->block_elems / p->sub_elems;
    for (int64_t i = 0; i < nb; i++) {
        for (int s = 0; s < subs; s++) {
            p->decode(raw + i * p->block_bytes, s,
                      slow + i * p->block_elems + (int64_t)s * p->sub_elems);
        }
    }
    p->dequantize_fast(raw, fast, n);
    int bad = 0;
    for (int64_t j = 0; j < n; j++) {
        if (!same(slow[j], fast[j])) {
            if (!bad) {
                printf("%s (%s): element %lld: decode %.9g, fast %.9g\n", p->name, what,
                       (long long)j, slow[j], fast[j]);
            }
            bad++;
        }
    }
    free(slow);
    free(fast);
    return bad;
}

int main(void) {
    int failures = 0;
    for (int32_t k = 0; k < fdy_policy_count(); k++) {
        const struct fdy_policy *p = fdy_policy_at(k);
        if (!p->dequantize_fast) {
            continue;
        }
        const int64_t nb = 4096 / p->block_elems + 67;
        uint8_t *raw = malloc((size_t)(nb * p->block_bytes));
        for (int64_t j = 0; j < nb * p->block_bytes; j++) {
            raw[j] = (uint8_t)rnd();
        }
        failures += compare(p, raw, nb, "random bytes") != 0;
        if (p->quantize) {
            const int64_t n = nb * p->block_elems;
            float *x = malloc((size_t)n * sizeof(float));
            for (int64_t j = 0; j < n; j++) {
                x[j] = gauss() * ldexpf(1.0f, (int)(rnd() % 13) - 6);
            }
            p->quantize(x, raw, n);
            failures += compare(p, raw, nb, "quantized data") != 0;
            free(x);
        }
        free(raw);
        printf("%s: ok\n", p->name);
    }
    return failures != 0;
}
"""


def test_decode_matches_fast_dequantize_bit_for_bit(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler")
    src = tmp_path / "decode_vs_fast.c"
    src.write_text(HARNESS)
    exe = tmp_path / "decode_vs_fast"
    sources = sorted(str(p) for pat in ("foundry_c/src/*.c", "foundry_c/src/cpu/*.c",
                                        "policies/*.c") for p in ROOT.glob(pat))
    inc = [f"-I{ROOT / d}" for d in ("foundry_c/include", "foundry_c/src", "policies", "metal")]
    build = subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-O2", "-ffp-contract=off",
                            "-fno-strict-aliasing", *inc, "-o", str(exe), str(src), *sources,
                            "-lm", "-lpthread"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
