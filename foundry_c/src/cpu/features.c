/* features.c - run-time detection of the processor's SIMD extensions.  Kernels ask
 * fdy_cpu_features_enabled() and pick their path; nothing is tied to the build machine.  Tests
 * narrow the set with fdy_cpu_set_feature_mask() to force each path. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "dialect.h"
#include "internal.h"
#include "policy.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* the OS lets this process use the AMX tile data (Linux asks for it once per process:
 * arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA; the threads made later inherit it) */
static int amx_permitted(void) {
#if defined(__linux__) && defined(__x86_64__) && defined(SYS_arch_prctl)
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
#else
    return 0;
#endif
}

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int is_intel(void) {
    uint32_t a, b, c, d;
    return __get_cpuid(0, &a, &b, &c, &d) && b == 0x756e6547u && d == 0x49656e69u &&
           c == 0x6c65746eu; /* "GenuineIntel" */
}

/* the default distance of the streaming kernels' software prefetch on this CPU: 16 KB on
 * Intel processors (an AVX-512 Xeon decoded 6-14% faster with it than with 4 KB), 4 KB
 * elsewhere (on a Zen 3 4-16 KB measured alike and 16 KB lost on q8_0; docs/CPU_NOTES.md items
 * 28 and 42) */
static int32_t default_stream_ahead(void) {
    return is_intel() ? 16384 : FDY_STREAM_AHEAD;
}

/* the default near distance (policy.h: fdy_stream_prefetch): 2 KB on Intel processors, else
 * the far distance itself (one level, as before the near prefetch) */
static int32_t default_stream_near(int32_t ahead) {
    return is_intel() ? 2048 : ahead;
}

static uint32_t detect(void) {
    uint32_t a, b, c, d, f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) {
        return 0;
    }
    int osxsave = (c >> 27) & 1;
    int fma = (c >> 12) & 1, f16c = (c >> 29) & 1, avx = (c >> 28) & 1;
    uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    int ymm_ok = (xcr0 & 0x6) == 0x6;
    int zmm_ok = (xcr0 & 0xe6) == 0xe6;
    if (!avx || !ymm_ok) {
        return 0;
    }
    if (fma) {
        f |= FDY_CPU_FMA;
    }
    if (f16c) {
        f |= FDY_CPU_F16C;
    }
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        if ((b >> 5) & 1) {
            f |= FDY_CPU_AVX2;
        }
        int avx512f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
        if (zmm_ok && avx512f && dq && bw && vl) {
            f |= FDY_CPU_AVX512;
            if ((c >> 11) & 1) {
                f |= FDY_CPU_AVX512VNNI;
            }
            /* AMX-TILE and AMX-INT8, the tile state enabled in XCR0 (bits 17, 18) */
            const int amx = ((d >> 24) & 1) && ((d >> 25) & 1);
            if (amx && (xcr0 & 0x60000) == 0x60000 && amx_permitted()) {
                f |= FDY_CPU_AMX;
            }
        }
        __cpuid_count(7, 1, a, b, c, d);
        if ((a >> 4) & 1) {
            f |= FDY_CPU_AVXVNNI;
        }
    }
    return f;
}
#elif defined(__aarch64__)
static uint32_t detect(void) {
    uint32_t f = FDY_CPU_NEON;
#if defined(__ARM_FEATURE_DOTPROD)
    f |= FDY_CPU_DOTPROD;
#endif
    return f;
}
#else
static uint32_t detect(void) {
    return 0;
}
#endif
#if !defined(__x86_64__) && !defined(__i386__)
static int32_t default_stream_ahead(void) {
    return FDY_STREAM_AHEAD;
}

static int32_t default_stream_near(int32_t ahead) {
    return ahead;
}
#endif

static _Atomic uint32_t fdy_detected = 0xffffffffu;
static _Atomic uint32_t fdy_mask = 0xffffffffu;

/* the distance of the streaming kernels' software prefetch (policy.h: fdy_stream_prefetch) */
#if defined(__GNUC__)
__attribute__((visibility("hidden")))
#endif
int32_t fdy_stream_ahead = FDY_STREAM_AHEAD;
#if defined(__GNUC__)
__attribute__((visibility("hidden")))
#endif
int32_t fdy_stream_near = FDY_STREAM_AHEAD;

/* every f16 as float (policy.h: fdy_f16_table), filled once, before the first feature word
 * any kernel reads is returned */
#if defined(__GNUC__)
__attribute__((visibility("hidden")))
#endif
float fdy_f16_table[65536];
static pthread_once_t f16_once = PTHREAD_ONCE_INIT;

static void f16_fill(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        fdy_f16_table[h] = fdy_half_to_float((uint16_t)h);
    }
}

/* *out = the environment variable name's value when it is a whole number of bytes from 0 to
 * 1 MiB (otherwise *out is left as it is) */
static void env_distance(const char *name, int32_t *out) {
    const char *s = getenv(name);
    if (s && *s) {
        char *end;
        const long v = strtol(s, &end, 10);
        if (*end == '\0' && v >= 0 && v <= (1L << 20)) {
            *out = (int32_t)v;
        }
    }
}

uint32_t fdy_cpu_features(void) {
    uint32_t f = atomic_load(&fdy_detected);
    if (f == 0xffffffffu) {
        pthread_once(&f16_once, f16_fill);
        fdy_stream_ahead = default_stream_ahead();
        /* PYFOUNDRY_PREFETCH_AHEAD=bytes and PYFOUNDRY_PREFETCH_NEAR=bytes (0 to 1 MiB) set
         * the distances, for tuning on other CPUs; PYFOUNDRY_NO_PREFETCH=1 turns the prefetch
         * off (both distances 0) */
        env_distance("PYFOUNDRY_PREFETCH_AHEAD", &fdy_stream_ahead);
        fdy_stream_near = default_stream_near(fdy_stream_ahead);
        env_distance("PYFOUNDRY_PREFETCH_NEAR", &fdy_stream_near);
        const char *np = getenv("PYFOUNDRY_NO_PREFETCH");
        if (np && *np && *np != '0') {
            fdy_stream_ahead = 0;
            fdy_stream_near = 0;
        }
        f = detect();
        atomic_store(&fdy_detected, f);
    }
    return f;
}

/* detected & mask, for the per-row tier choice of the kernels (policy.h: fdy_cpu_enabled) */
#if defined(__GNUC__)
__attribute__((visibility("hidden")))
#endif
_Atomic uint32_t fdy_cpu_enabled_bits = 0xffffffffu;

uint32_t fdy_cpu_features_enabled(void) {
    const uint32_t f = fdy_cpu_features() & atomic_load(&fdy_mask);
    /* store only a change: kernels on several threads call this per row, and a store on every
     * call kept the cache line moving between their cores (the f32 variant's decode gained
     * almost nothing from a second thread) */
    if (atomic_load_explicit(&fdy_cpu_enabled_bits, memory_order_relaxed) != f) {
        atomic_store_explicit(&fdy_cpu_enabled_bits, f, memory_order_relaxed);
    }
    return f;
}

int32_t fdy_cpu_prefetch_ahead(void) {
    (void)fdy_cpu_features();
    return fdy_stream_ahead;
}

int32_t fdy_cpu_prefetch_near(void) {
    (void)fdy_cpu_features();
    return fdy_stream_near;
}

void fdy_cpu_set_feature_mask(uint32_t mask) {
    atomic_store(&fdy_mask, mask);
    atomic_store(&fdy_cpu_enabled_bits, fdy_cpu_features() & mask);
}
