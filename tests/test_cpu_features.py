"""pf.cpu_features(): the detected and enabled SIMD sets, and the decode kernels' two prefetch
distances with their environment switches (read once, when the library first detects the CPU,
so each case runs in a fresh interpreter)."""
import json
import os
import platform
import subprocess
import sys

import pytest

import pyfoundry as pf

PROBE = "import json, pyfoundry as pf; print(json.dumps(pf.cpu_features()))"


def features_with(env):
    e = {k: v for k, v in os.environ.items()
         if k not in ("PYFOUNDRY_PREFETCH_AHEAD", "PYFOUNDRY_PREFETCH_NEAR",
                      "PYFOUNDRY_NO_PREFETCH")}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=e, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def cpu_vendor():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def test_cpu_features_shape():
    f = pf.cpu_features()
    assert set(f) == {"detected", "enabled", "prefetch_ahead", "prefetch_near"}
    assert set(f["enabled"]) <= set(f["detected"])
    for k in ("prefetch_ahead", "prefetch_near"):
        assert isinstance(f[k], int) and f[k] >= 0


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or cpu_vendor() is None,
                    reason="the default distance is chosen by the x86 vendor")
def test_default_prefetch_distance_by_vendor():
    intel = cpu_vendor() == "GenuineIntel"
    f = features_with({})
    assert f["prefetch_ahead"] == (16384 if intel else 4096)
    # Intel: a near L1 request at 2 KB besides the far L2 one; elsewhere one level
    assert f["prefetch_near"] == (2048 if intel else f["prefetch_ahead"])
    if not intel:  # the near distance follows a far one set from the environment
        assert features_with({"PYFOUNDRY_PREFETCH_AHEAD": "8192"})["prefetch_near"] == 8192


def test_prefetch_distance_switches():
    default = features_with({})["prefetch_ahead"]
    assert features_with({"PYFOUNDRY_PREFETCH_AHEAD": "8192"})["prefetch_ahead"] == 8192
    assert features_with({"PYFOUNDRY_PREFETCH_AHEAD": "0"})["prefetch_ahead"] == 0
    # not a number, negative, above 1 MiB: ignored
    for bad in ("8k", "-64", str((1 << 20) + 1), " "):
        assert features_with({"PYFOUNDRY_PREFETCH_AHEAD": bad})["prefetch_ahead"] == default
    assert features_with({"PYFOUNDRY_NO_PREFETCH": "1"})["prefetch_ahead"] == 0
    assert features_with({"PYFOUNDRY_NO_PREFETCH": "1",
                          "PYFOUNDRY_PREFETCH_AHEAD": "8192"})["prefetch_ahead"] == 0


def test_near_prefetch_distance_switches():
    f0 = features_with({})
    f = features_with({"PYFOUNDRY_PREFETCH_NEAR": "1024"})
    assert f["prefetch_near"] == 1024 and f["prefetch_ahead"] == f0["prefetch_ahead"]
    assert features_with({"PYFOUNDRY_PREFETCH_NEAR": "0"})["prefetch_near"] == 0
    f = features_with({"PYFOUNDRY_PREFETCH_NEAR": "1024", "PYFOUNDRY_PREFETCH_AHEAD": "8192"})
    assert (f["prefetch_ahead"], f["prefetch_near"]) == (8192, 1024)
    for bad in ("2k", "-64", str((1 << 20) + 1), " "):
        assert features_with({"PYFOUNDRY_PREFETCH_NEAR": bad})["prefetch_near"] == \
            f0["prefetch_near"]
    f = features_with({"PYFOUNDRY_NO_PREFETCH": "1", "PYFOUNDRY_PREFETCH_NEAR": "1024"})
    assert (f["prefetch_ahead"], f["prefetch_near"]) == (0, 0)
