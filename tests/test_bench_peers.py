"""benchmarks/bench_peers.py's check of the installed llama-cpp-python build: a build with
llama.cpp's AMX kernels (which crash on some CPUs, llama.cpp issue 20824) is recognised from
its system-info line, so the script can stop with the rebuild command instead of crashing."""
import pathlib
import sys
import types

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench_peers():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_peers
        yield bench_peers
    finally:
        sys.path.remove(str(BENCH))


def fake_llama(info):
    return types.SimpleNamespace(llama_print_system_info=lambda: info)


# system-info lines of the shape llama-cpp-python 0.3.36 prints
WITH_AMX = (b"CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | "
            b"FMA = 1 | BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | "
            b"AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
WITHOUT_AMX = WITH_AMX.replace(b"AMX_INT8 = 1 | ", b"")


def test_has_amx_reads_the_system_info_line(bench_peers):
    assert bench_peers.has_amx(fake_llama(WITH_AMX))
    assert bench_peers.has_amx(fake_llama(WITH_AMX.decode()))
    assert not bench_peers.has_amx(fake_llama(WITHOUT_AMX))
    assert not bench_peers.has_amx(fake_llama(WITH_AMX.replace(b"AMX_INT8 = 1", b"AMX_INT8 = 0")))


def test_the_rebuild_command_turns_amx_off_and_keeps_avx512(bench_peers):
    msg = bench_peers.AMX_MESSAGE
    # without GGML_NATIVE the AMX kernels are built only when asked for (GGML_AMX_*)
    assert "GGML_NATIVE=OFF" in msg and "GGML_AMX" not in msg
    assert "GGML_AVX512=ON" in msg and "GGML_AVX512_VNNI=ON" in msg and "--allow-amx" in msg
