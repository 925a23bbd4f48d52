"""The fused decode schedule (one token, no captures: Q/K/V and gate/up matmul groups, swiglu and
residual adds folded into the matmul stores, rope from a per-call table, head-major KV cache)
gives the same numbers, bit for bit, as running the plan instruction by instruction
(PYFOUNDRY_NO_FUSE=1), and captures taken while decoding leave the logits unchanged."""
import numpy as np
import pytest

import pyfoundry as pf

CASES = [("llama", "q4_0", None), ("qwen2", "q4_k", "q8_0"), ("llama", "q4_1", "q6_k"),
         ("llama", "iq2_xxs", None), ("qwen2", "f16", None)]


def decode(path, variant, tokens, no_fuse, monkeypatch, capture=None):
    if no_fuse:
        monkeypatch.setenv("PYFOUNDRY_NO_FUSE", "1")
    else:
        monkeypatch.delenv("PYFOUNDRY_NO_FUSE", raising=False)
    m = pf.Model(path, variant=variant)
    out = [m.forward(tokens[:5], 0)[-1]]  # a prefill, then one token at a time
    for t in tokens[5:]:
        r = m.forward([t], logits="last", capture=capture)
        out.append(r[0] if capture else r)
    return np.stack(out)


@pytest.mark.parametrize("arch,p,emb", CASES, ids=[f"{a}-{p}" for a, p, _ in CASES])
@pytest.mark.parametrize("variant", ["f32", "q8"])
def test_fused_decode_equals_plain_decode(tmp_path, monkeypatch, arch, p, emb, variant):
    # 6 heads over 2 kv heads: attention groups of 3; context 64 -> 128: the cache grows
    # (and is laid out again) during the decode
    path = pf.testing.synthetic_model(tmp_path / "m.gguf", arch, p, dim=768, n_heads=6,
                                      n_kv_heads=2, ffn_dim=512, embedding_policy=emb)
    tokens = [1] + list(np.random.default_rng(1).integers(3, 500, 90))
    fused = decode(path, variant, tokens, False, monkeypatch)
    plain = decode(path, variant, tokens, True, monkeypatch)
    np.testing.assert_array_equal(fused, plain)
    captured = decode(path, variant, tokens[:20], False, monkeypatch, capture="all")
    np.testing.assert_array_equal(captured, fused[:16])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fused_decode_does_not_depend_on_the_thread_count(tmp_path, monkeypatch, threads):
    path = pf.testing.synthetic_model(tmp_path / "m.gguf", "llama", "q8_0", dim=128,
                                      n_heads=4, n_kv_heads=1, ffn_dim=384)
    tokens = [1, 7, 300, 42, 9, 11, 250, 3, 77, 5]
    old = pf.get_num_threads()
    try:
        pf.set_num_threads(1)
        ref = decode(path, "q8", tokens, False, monkeypatch)
        pf.set_num_threads(threads)
        np.testing.assert_array_equal(decode(path, "q8", tokens, False, monkeypatch), ref)
    finally:
        pf.set_num_threads(old)
