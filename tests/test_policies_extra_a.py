"""Extra checks for the policies bf16, q4_0, q4_1, q5_0, q5_1, mxfp4, tq1_0, tq2_0, int8, nf4
that tests/test_policies.py does not make:

* the portable decode (fdy_decode_<name>, what the GPU kernels run) is bit-exact with the fast
  row dequantizer (what pf.Policy.dequantize runs), on random and on quantized blocks;
* MXFP4's shared exponent matches gguf-py when max|x| sits at or next to a power of two;
* quantizing edge rows never makes NaN or inf, and zero blocks decode to zeros;
* int8 / nf4 decode arbitrary (finite-scaled) blocks like the NumPy reference.
"""
import os
import shutil
import subprocess

import numpy as np
import pytest

import pyfoundry as pf
from pyfoundry.reference import quants as refq

from conftest import ALL_POLICIES, QUANTIZABLE, ROOT, gguf_qtype, policy_ids, random_rows

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "dialect.h"
#include "policy.h"

/* argv: policy name, block count; stdin: the blocks; stdout: fast path, then decode path */
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    const struct fdy_policy *p = fdy_policy_by_name(argv[1]);
    if (!p) return 3;
    const int64_t nb = atoll(argv[2]);
    const int64_t n = nb * p->block_elems;
    uint8_t *src = malloc((size_t)(nb * p->block_bytes));
    float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
    if (fread(src, 1, (size_t)(nb * p->block_bytes), stdin) != (size_t)(nb * p->block_bytes))
        return 4;
    if (fdy_policy_dequantize(p, src, a, n) != FDY_OK) return 5;
    const int subs = p->block_elems / p->sub_elems;
    for (int64_t i = 0; i < nb; i++)
        for (int s = 0; s < subs; s++)
            p->decode(src + i * p->block_bytes, s, b + i * p->block_elems + s * p->sub_elems);
    fwrite(a, sizeof(float), (size_t)n, stdout);
    fwrite(b, sizeof(float), (size_t)n, stdout);
    return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("decode_harness")
    (d / "harness.c").write_text(HARNESS)
    srcs = []
    for pat in ("foundry_c/src/*.c", "foundry_c/src/cpu/*.c", "policies/*.c"):
        srcs += sorted(str(p) for p in ROOT.glob(pat))
    exe = d / "harness"
    cmd = [cc, "-std=c11", "-D_GNU_SOURCE", "-O2", "-ffp-contract=off", "-fno-strict-aliasing",
           "-w", "-I" + str(ROOT / "foundry_c" / "include"), "-I" + str(ROOT / "foundry_c" / "src"),
           "-I" + str(ROOT / "policies"), "-I" + str(ROOT / "metal"), str(d / "harness.c"),
           *srcs, "-o", str(exe), "-lm", "-lpthread"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


def fast_and_decode(exe, p, raw):
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    nb = raw.size // p.block_bytes
    r = subprocess.run([str(exe), p.name, str(nb)], input=raw.tobytes(), capture_output=True)
    assert r.returncode == 0, r.stderr
    out = np.frombuffer(r.stdout, dtype=np.float32).reshape(2, -1)
    return out[0], out[1]


def same_bits(a, b):
    return bool(np.all((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))))


@pytest.mark.parametrize("p", ALL_POLICIES, ids=policy_ids(ALL_POLICIES))
def test_decode_is_bit_exact_with_fast_dequantize(p, harness):
    rng = np.random.default_rng(p.gguf_type + 11)
    nb = 64 if p.block_elems > 1 else 4096
    raws = [rng.integers(0, 256, size=(nb, p.block_bytes), dtype=np.uint8)]
    if p.can_quantize:
        raws.append(p.quantize(random_rows(p, rows=4, blocks=8, seed=3)))
    for raw in raws:
        fast, dec = fast_and_decode(harness, p, raw)
        assert same_bits(fast, dec), f"{p.name}: decode differs from the fast dequantizer"
        assert same_bits(fast, p.dequantize(raw).reshape(-1))


def test_mxfp4_exponent_at_powers_of_two_matches_gguf():
    gguf = pytest.importorskip("gguf")
    p = pf.policy("mxfp4")
    e = np.arange(-120, 120, dtype=np.int64)
    base = np.ldexp(np.float32(1), e).astype(np.float32).view(np.uint32).astype(np.int64)
    offs = np.arange(-64, 65, dtype=np.int64)
    amax = (base[:, None] + offs[None, :]).reshape(-1).astype(np.uint32).view(np.float32)
    x = np.zeros((amax.size, 32), np.float32)
    x[:, 7] = amax
    x[:, 3] = amax * np.float32(-0.3)
    x[1::2] *= -1
    x = x.reshape(16, -1)
    ours = p.quantize(x)
    ref = np.asarray(gguf.quants.quantize(x, gguf_qtype(p))).view(np.uint8).reshape(ours.shape)
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("p", QUANTIZABLE, ids=policy_ids(QUANTIZABLE))
def test_edge_rows_roundtrip_finite_and_zeros_exact(p):
    n = max(256, p.block_elems * 4)
    rng = np.random.default_rng(9)
    rows = np.stack([np.zeros(n), np.full(n, -2.5), rng.standard_normal(n) * 1e-7,
                     rng.standard_normal(n) * 1e-30, rng.standard_normal(n) * 3e3,
                     np.where(np.arange(n) % 5 == 0, 1.0, 0.0)]).astype(np.float32)
    y = p.dequantize(p.quantize(rows))
    assert np.all(np.isfinite(y)), f"{p.name}: NaN or inf after a roundtrip of finite rows"
    assert np.all(y[0] == 0), f"{p.name}: zeros do not come back as zeros"


@pytest.mark.parametrize("name", ["int8", "nf4"])
def test_numpy_reference_decodes_arbitrary_blocks_like_the_core(name):
    p = pf.policy(name)
    rng = np.random.default_rng(21)
    raw = rng.integers(0, 256, size=(32, p.block_bytes), dtype=np.uint8)
    # keep the f16 fields finite: exponent bits below 0x1f
    nf16 = 2 if name == "int8" else 1
    for k in range(nf16):
        raw[:, 2 * k + 1] &= 0x7B
    raw = raw.reshape(4, -1)
    ours = p.dequantize(raw)
    ref = refq.REFERENCE[name].dequantize(raw)
    assert same_bits(ours.reshape(-1), ref.reshape(-1).astype(np.float32))


def test_int8_signed_zero_extremes_match_reference():
    p = pf.policy("int8")
    x = np.zeros((4, 256), np.float32)
    x[0, ::3] = -0.0
    x[1] = -0.0
    x[2, ::2] = -0.0
    x[2, 1::4] = 0.5
    x[3, ::5] = -0.0
    x[3, 1::4] = -0.5
    assert np.array_equal(p.quantize(x), refq.REFERENCE["int8"].quantize(x))
