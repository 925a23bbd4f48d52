"""Build script: compiles the C core (foundry_c/, policies/) and the bindings (pyfoundry/_ext/)
into the extension pyfoundry._core.  No flag ties the binary to the build machine's CPU: SIMD
code paths carry per-function target attributes and are chosen at run time.  On macOS the
Metal host (foundry_c/src/gpu/metal.m, Objective-C with ARC) is added and linked with the
Metal and Foundation frameworks; elsewhere it is left out."""
import glob
import hashlib
import os

import subprocess
import sys

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DARWIN = sys.platform == "darwin"

HERE = os.path.dirname(os.path.abspath(__file__))

# the GPU kernel texts (metal/, policies/) become C string literals compiled into the core
subprocess.check_call([sys.executable, os.path.join(HERE, "tools", "embed_gpu_sources.py")])


def sources():
    pats = ["foundry_c/src/*.c", "foundry_c/src/cpu/*.c", "foundry_c/src/gpu/*.c",
            "policies/*.c", "pyfoundry/_ext/*.c"]
    out = []
    for p in pats:
        out += sorted(os.path.relpath(f, HERE) for f in glob.glob(os.path.join(HERE, p)))
    if DARWIN:
        out.append("foundry_c/src/gpu/metal.m")
    return out


def build_id(files):
    """sha256 of every source that determines the compiled code: part of every step key."""
    h = hashlib.sha256()
    for f in sorted(files + glob.glob(os.path.join(HERE, "**", "*.h"), recursive=True) +
                    glob.glob(os.path.join(HERE, "policies", "*.def"))):
        path = f if os.path.isabs(f) else os.path.join(HERE, f)
        h.update(os.path.relpath(path, HERE).encode())
        with open(path, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:32]


SOURCES = sources()

core = Extension(
    "pyfoundry._core",
    sources=SOURCES,
    include_dirs=["foundry_c/include", "foundry_c/src", "foundry_c/src/gpu", "policies", "metal",
                  numpy.get_include()],
    define_macros=[("_GNU_SOURCE", "1"), ("FDY_BUILD_ID", '"%s"' % build_id(SOURCES))],
    extra_compile_args=["-std=c11", "-O3", "-ffp-contract=off", "-fno-strict-aliasing",
                        "-Wno-unused-function", "-Wno-unused-parameter"],
    extra_link_args=["-lm", "-lpthread", "-ldl"] +
                    (["-framework", "Metal", "-framework", "Foundation"] if DARWIN else []),
)


class BuildExt(build_ext):
    """Objective-C sources (.m) get -fobjc-arc and the compiler's default language standard
    instead of -std=c11; C sources are compiled as before."""

    def build_extensions(self):
        compile_one = self.compiler._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            if src.endswith(".m"):
                extra_postargs = [a for a in extra_postargs if not a.startswith("-std=")]
                extra_postargs = extra_postargs + ["-fobjc-arc"]
            compile_one(obj, src, ext, cc_args, extra_postargs, pp_opts)

        self.compiler._compile = _compile
        super().build_extensions()


setup(ext_modules=[core], cmdclass={"build_ext": BuildExt})
