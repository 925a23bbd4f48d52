"""Build script: compiles the C core (foundry_c/, policies/) and the bindings (pyfoundry/_ext/)
into the extension pyfoundry._core.  No flag ties the binary to the build machine's CPU: SIMD
code paths carry per-function target attributes and are chosen at run time."""
import glob
import os

import numpy
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def sources():
    pats = ["foundry_c/src/*.c", "foundry_c/src/cpu/*.c", "foundry_c/src/gpu/*.c",
            "policies/*.c", "pyfoundry/_ext/*.c"]
    out = []
    for p in pats:
        out += sorted(os.path.relpath(f, HERE) for f in glob.glob(os.path.join(HERE, p)))
    return out


core = Extension(
    "pyfoundry._core",
    sources=sources(),
    include_dirs=["foundry_c/include", "foundry_c/src", "policies", "metal",
                  numpy.get_include()],
    define_macros=[("_GNU_SOURCE", "1")],
    extra_compile_args=["-std=c11", "-O3", "-ffp-contract=off", "-fno-strict-aliasing",
                        "-Wno-unused-function", "-Wno-unused-parameter"],
    extra_link_args=["-lm", "-lpthread"],
)

setup(ext_modules=[core])
