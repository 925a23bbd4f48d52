"""pf.cpu_features(): the detected and enabled SIMD sets, and the decode kernels' prefetch
distance with its environment switches (read once, when the library first detects the CPU,
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
         if k not in ("PYFOUNDRY_PREFETCH_AHEAD", "PYFOUNDRY_NO_PREFETCH")}
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
    assert set(f) == {"detected", "enabled", "prefetch_ahead"}
    assert set(f["enabled"]) <= set(f["detected"])
    assert isinstance(f["prefetch_ahead"], int) and f["prefetch_ahead"] >= 0


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or cpu_vendor() is None,
                    reason="the default distance is chosen by the x86 vendor")
def test_default_prefetch_distance_by_vendor():
    want = 16384 if cpu_vendor() == "GenuineIntel" else 4096
    assert features_with({})["prefetch_ahead"] == want


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
