"""pyfoundry.drift.compare on cases with known answers."""
import math

import numpy as np
import pytest

from pyfoundry.drift import Comparison, compare


def test_identical():
    a = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    c = compare(a, a.copy())
    assert isinstance(c, Comparison)
    assert c.shape == (4, 8)
    assert c.max_abs == 0 and c.rel_l2 == 0 and c.max_ulp == 0
    assert c.cosine == pytest.approx(1.0, abs=1e-15)
    assert c.top1_agreement is None
    d = c.as_dict()
    assert d["max_ulp"] == 0 and d["shape"] == (4, 8) and "kl_divergence" not in d
    assert "max_ulp=0" in repr(c) and repr(c).startswith("Comparison(")


def test_known_errors():
    b = np.array([3.0, 4.0])
    a = np.array([3.0, 5.0])
    c = compare(a, b)
    assert c.max_abs == 1.0
    assert c.rel_l2 == pytest.approx(1 / 5)
    assert c.cosine == pytest.approx((9 + 20) / (5 * math.hypot(3, 5)))
    # opposite vectors
    assert compare(-b, b).cosine == pytest.approx(-1.0)
    # orthogonal
    assert compare(np.array([1.0, 0.0]), np.array([0.0, 1.0])).cosine == pytest.approx(0.0)


def test_zero_cases():
    z = np.zeros(3)
    c = compare(z, z)
    assert c.rel_l2 == 0 and c.cosine == 1.0 and c.max_ulp == 0
    c = compare(np.ones(3), z)
    assert c.rel_l2 == math.inf
    assert c.cosine == 0.0
    assert compare(z, np.ones(3)).rel_l2 == 1.0


def test_one_ulp():
    b = np.array([1.0, -2.5, 1e-30, 3e38], np.float32)
    for i in range(len(b)):
        a = b.copy()
        a[i] = np.nextafter(b[i], np.float32(np.inf))
        assert compare(a, b).max_ulp == 1
        a[i] = np.nextafter(b[i], np.float32(-np.inf))
        assert compare(a, b).max_ulp == 1
    # 7 ulps up
    a = b.copy()
    for _ in range(7):
        a[0] = np.nextafter(a[0], np.float32(2))
    assert compare(a, b).max_ulp == 7
    # float64 inputs are cast to float32 first: a float64-level nudge is 0 ulp
    assert compare(np.array([1.0 + 1e-15]), np.array([1.0])).max_ulp == 0


def test_ulp_across_zero():
    tiny = np.float32(np.nextafter(np.float32(0), np.float32(1)))   # smallest subnormal
    assert tiny > 0
    assert compare(np.array([-0.0], np.float32), np.array([0.0], np.float32)).max_ulp == 0
    assert compare(np.array([tiny]), np.array([-tiny])).max_ulp == 2
    assert compare(np.array([tiny]), np.array([0.0], np.float32)).max_ulp == 1
    assert compare(np.array([-tiny]), np.array([-0.0], np.float32)).max_ulp == 1
    # 1.0 vs -1.0: twice the number of positive floats below 1.0
    one_bits = int(np.array([1.0], np.float32).view(np.int32)[0])
    assert compare(np.array([1.0]), np.array([-1.0])).max_ulp == 2 * one_bits
    # infinities: max float to inf is one step
    fmax = np.finfo(np.float32).max
    assert compare(np.array([np.inf], np.float32), np.array([fmax])).max_ulp == 1


def test_nan_raises():
    with pytest.raises(ValueError, match=r"\ba\b"):
        compare(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\bb\b"):
        compare(np.array([1.0, 2.0]), np.array([np.nan, 2.0]))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        compare(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="shape"):
        compare(np.zeros(3), np.zeros((1, 3)))


def test_logits_identical():
    x = np.random.default_rng(1).standard_normal((3, 10))
    c = compare(x, x, logits=True)
    assert c.top1_agreement == 1.0 and c.topk_agreement == 1.0
    assert c.kl_divergence == pytest.approx(0.0, abs=1e-15)
    assert c.k == 5
    d = c.as_dict()
    assert d["top1_agreement"] == 1.0 and d["kl_divergence"] == pytest.approx(0.0, abs=1e-15)
    assert "top5=" in repr(c)
    # a constant shift of the logits changes nothing
    c = compare(x + 7.0, x, logits=True)
    assert c.top1_agreement == 1.0 and c.kl_divergence == pytest.approx(0.0, abs=1e-12)


def test_logits_agreement_hand_made():
    b = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
                  [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    a = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0],      # same order
                  [0.0, 1.0, 2.0, 3.0, 6.0, 5.0]])     # top-1 moves from 5 to 4
    c = compare(a, b, logits=True, k=2)
    assert c.top1_agreement == 0.5
    assert c.topk_agreement == 1.0        # the top-2 sets are {0,1} and {4,5} in both
    c = compare(a, b, logits=True, k=1)
    assert c.topk_agreement == 0.5
    # row 2's top-3 of a is {4,5,3} vs b {5,4,3}: same; swap a low value in
    a2 = a.copy()
    a2[1, 0] = 10.0                       # a's top-3 {0,4,5}; b's {5,4,3}: 2 of 3
    c = compare(a2, b, logits=True, k=3)
    assert c.topk_agreement == pytest.approx((1.0 + 2 / 3) / 2)
    assert c.top1_agreement == 0.5


def test_kl_vs_direct_formula():
    r = np.random.default_rng(2)
    b = r.standard_normal((4, 7)) * 2
    a = b + r.standard_normal((4, 7)) * 0.3
    want = []
    for ra, rb in zip(a, b):
        pa = np.exp(ra) / np.exp(ra).sum()
        pb = np.exp(rb) / np.exp(rb).sum()
        want.append(sum(pb[i] * math.log(pb[i] / pa[i]) for i in range(7)))
    c = compare(a, b, logits=True)
    assert c.kl_divergence == pytest.approx(np.mean(want), rel=1e-10)
    assert c.kl_divergence > 0
    # KL is not symmetric: reference is b
    assert compare(b, a, logits=True).kl_divergence != pytest.approx(c.kl_divergence, rel=1e-6)


def test_kl_two_point_known_value():
    # p = softmax(b) = (1/2, 1/2), q = softmax(a) = (e/(1+e), 1/(1+e))
    a = np.array([1.0, 0.0])
    b = np.array([0.0, 0.0])
    q1 = math.e / (1 + math.e)
    want = 0.5 * math.log(0.5 / q1) + 0.5 * math.log(0.5 / (1 - q1))
    c = compare(a, b, logits=True, k=1)
    assert c.kl_divergence == pytest.approx(want, rel=1e-12)
    assert c.top1_agreement == 1.0          # a tie in b: argmax takes the first


def test_kl_stable_with_huge_logits():
    b = np.array([[1000.0, 0.0, -1000.0]])
    c = compare(b, b, logits=True, k=2)
    assert c.kl_divergence == 0.0 and np.isfinite(c.max_abs)


def test_logits_batched_shape_and_bad_k():
    x = np.random.default_rng(3).standard_normal((2, 3, 6))
    c = compare(x, x, logits=True, k=6)
    assert c.top1_agreement == 1.0 and c.topk_agreement == 1.0 and c.shape == (2, 3, 6)
    with pytest.raises(ValueError, match="k"):
        compare(x, x, logits=True, k=7)
    with pytest.raises(ValueError, match="k"):
        compare(x, x, logits=True, k=0)


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    """Report.plot names the missing package instead of raising a bare ModuleNotFoundError."""
    import sys

    from pyfoundry import FoundryError
    from pyfoundry.drift import Report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(FoundryError, match="pip install matplotlib"):
        Report([]).plot(path=tmp_path / "p.png")
