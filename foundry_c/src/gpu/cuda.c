/* cuda.c - the CUDA host: the driver API (libcuda) and NVRTC (libnvrtc) opened with dlopen,
 * one primary context and one stream, device memory, run-time compiled modules cached by
 * content key in memory and on disk, launches, graph capture and events.
 *
 * Nothing here needs CUDA headers: the few driver and NVRTC types are declared below (their
 * ABI is stable).  Every failure is a status with a message; without a driver or a device
 * fdy_cuda_init returns FDY_ERR_UNSUPPORTED and the rest of the library is unaffected.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gpu.h"
#include "internal.h"

/* ---- driver and NVRTC declarations ---- */

typedef int CUresult; /* 0 = CUDA_SUCCESS */
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphExec_st *CUgraphExec;
typedef unsigned long long CUdeviceptr;
typedef int nvrtcResult; /* 0 = NVRTC_SUCCESS */
typedef struct _nvrtcProgram *nvrtcProgram;

enum {
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
    CU_STREAM_NON_BLOCKING = 1,
    CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1,
    CU_EVENT_DEFAULT = 0
};

#define CU_FUNCS(X)                                                                          \
    X(cuInit, CUresult, (unsigned))                                                          \
    X(cuDriverGetVersion, CUresult, (int *))                                                 \
    X(cuDeviceGetCount, CUresult, (int *))                                                   \
    X(cuDeviceGet, CUresult, (CUdevice *, int))                                              \
    X(cuDeviceGetName, CUresult, (char *, int, CUdevice))                                    \
    X(cuDeviceGetAttribute, CUresult, (int *, int, CUdevice))                                \
    X(cuDevicePrimaryCtxRetain, CUresult, (CUcontext *, CUdevice))                           \
    X(cuCtxSetCurrent, CUresult, (CUcontext))                                                \
    X(cuGetErrorString, CUresult, (CUresult, const char **))                                 \
    X(cuStreamCreate, CUresult, (CUstream *, unsigned))                                      \
    X(cuStreamSynchronize, CUresult, (CUstream))                                             \
    X(cuMemAlloc_v2, CUresult, (CUdeviceptr *, size_t))                                      \
    X(cuMemFree_v2, CUresult, (CUdeviceptr))                                                 \
    X(cuMemcpyHtoDAsync_v2, CUresult, (CUdeviceptr, const void *, size_t, CUstream))         \
    X(cuMemcpyDtoHAsync_v2, CUresult, (void *, CUdeviceptr, size_t, CUstream))               \
    X(cuMemcpyDtoDAsync_v2, CUresult, (CUdeviceptr, CUdeviceptr, size_t, CUstream))          \
    X(cuMemsetD32Async, CUresult, (CUdeviceptr, unsigned, size_t, CUstream))                 \
    X(cuModuleLoadData, CUresult, (CUmodule *, const void *))                                \
    X(cuModuleGetFunction, CUresult, (CUfunction *, CUmodule, const char *))                 \
    X(cuLaunchKernel, CUresult,                                                              \
      (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,     \
       CUstream, void **, void **))                                                          \
    X(cuStreamBeginCapture_v2, CUresult, (CUstream, int))                                    \
    X(cuStreamEndCapture, CUresult, (CUstream, CUgraph *))                                   \
    X(cuGraphInstantiateWithFlags, CUresult, (CUgraphExec *, CUgraph, unsigned long long))   \
    X(cuGraphLaunch, CUresult, (CUgraphExec, CUstream))                                      \
    X(cuGraphExecDestroy, CUresult, (CUgraphExec))                                           \
    X(cuGraphDestroy, CUresult, (CUgraph))                                                   \
    X(cuEventCreate, CUresult, (CUevent *, unsigned))                                        \
    X(cuEventRecord, CUresult, (CUevent, CUstream))                                          \
    X(cuEventSynchronize, CUresult, (CUevent))                                               \
    X(cuEventDestroy_v2, CUresult, (CUevent))

#define NVRTC_FUNCS(X)                                                                       \
    X(nvrtcVersion, nvrtcResult, (int *, int *))                                             \
    X(nvrtcGetErrorString, const char *, (nvrtcResult))                                      \
    X(nvrtcCreateProgram, nvrtcResult,                                                       \
      (nvrtcProgram *, const char *, const char *, int, const char *const *,                 \
       const char *const *))                                                                 \
    X(nvrtcCompileProgram, nvrtcResult, (nvrtcProgram, int, const char *const *))            \
    X(nvrtcGetProgramLogSize, nvrtcResult, (nvrtcProgram, size_t *))                         \
    X(nvrtcGetProgramLog, nvrtcResult, (nvrtcProgram, char *))                               \
    X(nvrtcGetCUBINSize, nvrtcResult, (nvrtcProgram, size_t *))                              \
    X(nvrtcGetCUBIN, nvrtcResult, (nvrtcProgram, char *))                                    \
    X(nvrtcDestroyProgram, nvrtcResult, (nvrtcProgram *))

typedef CUresult (*elapsed_fn)(float *, CUevent, CUevent);

static struct {
#define DECL(name, ret, args) ret(*name) args;
    CU_FUNCS(DECL) NVRTC_FUNCS(DECL)
#undef DECL
    elapsed_fn cuEventElapsedTime;
    void *libcuda, *libnvrtc;
    CUdevice dev;
    CUcontext ctx;
    CUstream stream;
    int arch, driver, nvrtc_version;
    char name[256];
    fdy_status init_status;
    char init_error[512];
} C;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t module_lock = PTHREAD_MUTEX_INITIALIZER;

static fdy_status cu_fail(CUresult r, const char *what) {
    const char *s = NULL;
    if (C.cuGetErrorString) {
        C.cuGetErrorString(r, &s);
    }
    return fdy_fail(r == 2 ? FDY_ERR_NOMEM : FDY_ERR_STATE, "cuda: %s failed: %s (%d)", what,
                    s ? s : "unknown error", r);
}

#define CU(call, what)                                                                       \
    do {                                                                                     \
        CUresult r_ = (call);                                                                \
        if (r_ != 0) {                                                                       \
            return cu_fail(r_, what);                                                        \
        }                                                                                    \
    } while (0)

/* ---- loading ---- */

static void *open_first(const char *const *names) {
    for (int i = 0; names[i]; i++) {
        void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (h) {
            return h;
        }
    }
    return NULL;
}

static void *open_nvrtc(void) {
    const char *env = getenv("PYFOUNDRY_NVRTC");
    if (env && *env) {
        void *h = dlopen(env, RTLD_NOW | RTLD_LOCAL);
        if (h) {
            return h;
        }
    }
    static const char *const names[] = {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12",
                                        "libnvrtc.so.11.2", "libnvrtc.so.11.1",
                                        "libnvrtc.so.11.0", NULL};
    void *h = open_first(names);
    if (h) {
        return h;
    }
    const char *homes[] = {getenv("CUDA_HOME"), getenv("CUDA_PATH"), "/usr/local/cuda", NULL};
    for (int i = 0; i < 3; i++) {
        if (!homes[i] || !*homes[i]) {
            continue;
        }
        for (int j = 0; names[j]; j++) {
            char path[1024];
            snprintf(path, sizeof path, "%s/lib64/%s", homes[i], names[j]);
            if ((h = dlopen(path, RTLD_NOW | RTLD_LOCAL))) {
                return h;
            }
        }
    }
    return NULL;
}

static fdy_status init_fail(fdy_status s, const char *msg) {
    C.init_status = s;
    snprintf(C.init_error, sizeof C.init_error, "%s", msg);
    return s;
}

static void do_init(void) {
    static const char *const cuda_names[] = {"libcuda.so.1", "libcuda.so", NULL};
    char msg[512];
    C.libcuda = open_first(cuda_names);
    if (!C.libcuda) {
        init_fail(FDY_ERR_UNSUPPORTED, "cuda: no NVIDIA driver (libcuda.so.1 not found)");
        return;
    }
#define LOAD(name, ret, args)                                                                \
    C.name = (ret(*) args)dlsym(C.libcuda, #name);                                           \
    if (!C.name) {                                                                           \
        init_fail(FDY_ERR_UNSUPPORTED, "cuda: the driver lacks " #name);                     \
        return;                                                                              \
    }
    CU_FUNCS(LOAD)
#undef LOAD
    C.cuEventElapsedTime = (elapsed_fn)dlsym(C.libcuda, "cuEventElapsedTime_v2");
    if (!C.cuEventElapsedTime) {
        C.cuEventElapsedTime = (elapsed_fn)dlsym(C.libcuda, "cuEventElapsedTime");
    }
    CUresult r = C.cuInit(0);
    int count = 0;
    if (r != 0 || C.cuDeviceGetCount(&count) != 0 || count == 0) {
        init_fail(FDY_ERR_UNSUPPORTED, "cuda: no usable CUDA device (cuInit or device count)");
        return;
    }
    const char *dev_env = getenv("PYFOUNDRY_CUDA_DEVICE");
    int ordinal = dev_env ? atoi(dev_env) : 0;
    if (ordinal < 0 || ordinal >= count || C.cuDeviceGet(&C.dev, ordinal) != 0) {
        snprintf(msg, sizeof msg, "cuda: no device %d (%d present)", ordinal, count);
        init_fail(FDY_ERR_UNSUPPORTED, msg);
        return;
    }
    int major = 0, minor = 0;
    C.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, C.dev);
    C.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, C.dev);
    C.arch = major * 10 + minor;
    C.cuDeviceGetName(C.name, sizeof C.name - 1, C.dev);
    C.cuDriverGetVersion(&C.driver);
    if (C.cuDevicePrimaryCtxRetain(&C.ctx, C.dev) != 0 || C.cuCtxSetCurrent(C.ctx) != 0 ||
        C.cuStreamCreate(&C.stream, CU_STREAM_NON_BLOCKING) != 0) {
        init_fail(FDY_ERR_STATE, "cuda: could not create a context and stream");
        return;
    }
    C.libnvrtc = open_nvrtc();
    if (!C.libnvrtc) {
        init_fail(FDY_ERR_UNSUPPORTED, "cuda: libnvrtc not found (set PYFOUNDRY_NVRTC to its "
                                       "path, or CUDA_HOME)");
        return;
    }
#define LOAD(name, ret, args)                                                                \
    C.name = (ret(*) args)dlsym(C.libnvrtc, #name);                                          \
    if (!C.name) {                                                                           \
        init_fail(FDY_ERR_UNSUPPORTED, "cuda: libnvrtc lacks " #name);                       \
        return;                                                                              \
    }
    NVRTC_FUNCS(LOAD)
#undef LOAD
    int vmaj = 0, vmin = 0;
    C.nvrtcVersion(&vmaj, &vmin);
    C.nvrtc_version = vmaj * 1000 + vmin * 10;
    C.init_status = FDY_OK;
}

fdy_status fdy_cuda_init(void) {
    pthread_once(&init_once, do_init);
    if (C.init_status != FDY_OK) {
        return fdy_fail(C.init_status, "%s", C.init_error);
    }
    CU(C.cuCtxSetCurrent(C.ctx), "cuCtxSetCurrent");
    return FDY_OK;
}

#define ENSURE()                                                                             \
    do {                                                                                     \
        fdy_status s_ = fdy_cuda_init();                                                     \
        if (s_) {                                                                            \
            return s_;                                                                       \
        }                                                                                    \
    } while (0)

const char *fdy_cuda_device_name(void) {
    return fdy_cuda_init() == FDY_OK ? C.name : NULL;
}

int fdy_cuda_arch(void) {
    return fdy_cuda_init() == FDY_OK ? C.arch : 0;
}

int fdy_cuda_driver_version(void) {
    return fdy_cuda_init() == FDY_OK ? C.driver : 0;
}

/* ---- SHA-256 (content keys) ---- */

typedef struct sha256 {
    uint32_t h[8];
    uint8_t buf[64];
    uint64_t len;
} sha256;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(sha256 *s, const uint8_t *p) {
    uint32_t w[64], a[8];
    for (int i = 0; i < 16; i++) {
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    }
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(a, s->h, sizeof a);
    for (int i = 0; i < 64; i++) {
        uint32_t S1 = ROR(a[4], 6) ^ ROR(a[4], 11) ^ ROR(a[4], 25);
        uint32_t ch = (a[4] & a[5]) ^ (~a[4] & a[6]);
        uint32_t t1 = a[7] + S1 + ch + K256[i] + w[i];
        uint32_t S0 = ROR(a[0], 2) ^ ROR(a[0], 13) ^ ROR(a[0], 22);
        uint32_t mj = (a[0] & a[1]) ^ (a[0] & a[2]) ^ (a[1] & a[2]);
        memmove(a + 1, a, 7 * sizeof a[0]);
        a[4] += t1;
        a[0] = t1 + S0 + mj;
    }
    for (int i = 0; i < 8; i++) {
        s->h[i] += a[i];
    }
}

static void sha_init(sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->len = 0;
}

static void sha_add(sha256 *s, const void *data, size_t n) {
    const uint8_t *p = (const uint8_t *)data;
    while (n--) {
        s->buf[s->len++ % 64] = *p++;
        if (s->len % 64 == 0) {
            sha_block(s, s->buf);
        }
    }
}

static void sha_hex(sha256 *s, char out[65]) {
    uint64_t bits = s->len * 8;
    uint8_t pad = 0x80, zero = 0, lenb[8];
    sha_add(s, &pad, 1);
    while (s->len % 64 != 56) {
        sha_add(s, &zero, 1);
    }
    for (int i = 0; i < 8; i++) {
        lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
    }
    sha_add(s, lenb, 8);
    for (int i = 0; i < 8; i++) {
        snprintf(out + 8 * i, 9, "%08x", s->h[i]);
    }
}

/* ---- modules: compile, cache ---- */

struct fdy_cuda_module {
    char key[65];
    CUmodule mod;
    struct fn_entry {
        char name[64];
        CUfunction fn;
    } fns[16];
    int n_fns;
    fdy_cuda_module *next;
};

static fdy_cuda_module *modules;

static void cache_dir(char *out, size_t n) {
    const char *d = getenv("PYFOUNDRY_CACHE_DIR");
    if (d && *d) {
        snprintf(out, n, "%s/cuda", d);
    } else if ((d = getenv("XDG_CACHE_HOME")) && *d) {
        snprintf(out, n, "%s/pyfoundry/cuda", d);
    } else if ((d = getenv("HOME")) && *d) {
        snprintf(out, n, "%s/.cache/pyfoundry/cuda", d);
    } else {
        out[0] = 0;
    }
}

static void mkdirs(const char *path) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(tmp, 0755);
            *p = '/';
        }
    }
    mkdir(tmp, 0755);
}

static char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    char *data = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n > 0 && fseek(f, 0, SEEK_SET) == 0 && (data = (char *)malloc((size_t)n))) {
            if (fread(data, 1, (size_t)n, f) != (size_t)n) {
                free(data);
                data = NULL;
            } else {
                *size = (size_t)n;
            }
        }
    }
    fclose(f);
    return data;
}

static void write_file(const char *dir, const char *path, const char *data, size_t n) {
    char tmp[1100];
    mkdirs(dir);
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        return; /* the disk cache is best effort */
    }
    int ok = fwrite(data, 1, n, f) == n;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
    }
}

/* FDY_CUDA_FMAD=1 in the environment allows FMA contraction (for speed comparisons; the
 * decode is then no longer bit-identical with the CPU's) */
static const char *fmad_opt(void) {
    const char *e = getenv("FDY_CUDA_FMAD");
    return (e && e[0] == '1') ? "--fmad=true" : "--fmad=false";
}

static fdy_status nvrtc_compile(const char *source, const char *arch_opt, char **cubin,
                                size_t *size) {
    nvrtcProgram prog;
    nvrtcResult r = C.nvrtcCreateProgram(&prog, source, "pyfoundry.cu", 0, NULL, NULL);
    if (r != 0) {
        return fdy_fail(FDY_ERR_STATE, "nvrtc: create program: %s", C.nvrtcGetErrorString(r));
    }
    /* no FMA contraction: the policy decode code rounds as the CPU (built with
     * -ffp-contract=off) and the oracles do, so decoded weights are bit-identical */
    const char *opts[] = {arch_opt, "--std=c++17", "-default-device", fmad_opt()};
    r = C.nvrtcCompileProgram(prog, 4, opts);
    if (r != 0) {
        size_t n = 0;
        C.nvrtcGetProgramLogSize(prog, &n);
        char *log = (char *)malloc(n + 1);
        if (log) {
            log[0] = 0;
            C.nvrtcGetProgramLog(prog, log);
            log[n] = 0;
        }
        fdy_status s = fdy_fail(FDY_ERR_INVALID, "nvrtc: compile failed (%s): %.3000s",
                                C.nvrtcGetErrorString(r), log ? log : "");
        free(log);
        C.nvrtcDestroyProgram(&prog);
        return s;
    }
    r = C.nvrtcGetCUBINSize(prog, size);
    if (r == 0 && (*cubin = (char *)malloc(*size))) {
        r = C.nvrtcGetCUBIN(prog, *cubin);
    }
    C.nvrtcDestroyProgram(&prog);
    if (r != 0 || !*cubin) {
        free(*cubin);
        *cubin = NULL;
        return fdy_fail(FDY_ERR_STATE, "nvrtc: no cubin");
    }
    return FDY_OK;
}

fdy_status fdy_cuda_module_get(const char *source, fdy_cuda_module **out) {
    ENSURE();
    if (!source || !out) {
        return fdy_fail(FDY_ERR_INVALID, "cuda: module needs a source");
    }
    char arch_opt[64], key[65], info[128];
    snprintf(arch_opt, sizeof arch_opt, "--gpu-architecture=sm_%d", C.arch);
    snprintf(info, sizeof info, "driver %d nvrtc %d %s --std=c++17 -default-device %s",
             C.driver, C.nvrtc_version, arch_opt, fmad_opt());
    sha256 h;
    sha_init(&h);
    sha_add(&h, info, strlen(info) + 1);
    sha_add(&h, source, strlen(source));
    sha_hex(&h, key);

    pthread_mutex_lock(&module_lock);
    for (fdy_cuda_module *m = modules; m; m = m->next) {
        if (strcmp(m->key, key) == 0) {
            *out = m;
            pthread_mutex_unlock(&module_lock);
            return FDY_OK;
        }
    }
    char dir[900], path[1000];
    cache_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/%s.cubin", dir, key);
    size_t size = 0;
    char *cubin = dir[0] ? read_file(path, &size) : NULL;
    fdy_status s = FDY_OK;
    int from_disk = cubin != NULL;
    if (!cubin) {
        s = nvrtc_compile(source, arch_opt, &cubin, &size);
    }
    fdy_cuda_module *m = NULL;
    if (s == FDY_OK) {
        m = (fdy_cuda_module *)calloc(1, sizeof *m);
        if (!m) {
            s = fdy_fail(FDY_ERR_NOMEM, "cuda: out of memory");
        } else {
            CUresult r = C.cuModuleLoadData(&m->mod, cubin);
            if (r != 0 && from_disk) { /* a stale or damaged cache entry: rebuild it */
                free(cubin);
                cubin = NULL;
                from_disk = 0;
                s = nvrtc_compile(source, arch_opt, &cubin, &size);
                r = s == FDY_OK ? C.cuModuleLoadData(&m->mod, cubin) : 0;
            }
            if (s == FDY_OK && r != 0) {
                s = cu_fail(r, "cuModuleLoadData");
            }
        }
    }
    if (s == FDY_OK) {
        if (!from_disk && dir[0]) {
            write_file(dir, path, cubin, size);
        }
        memcpy(m->key, key, sizeof key);
        m->next = modules;
        modules = m;
        *out = m;
    } else {
        free(m);
    }
    free(cubin);
    pthread_mutex_unlock(&module_lock);
    return s;
}

const char *fdy_cuda_module_key(const fdy_cuda_module *m) {
    return m ? m->key : NULL;
}

static fdy_status get_function(fdy_cuda_module *m, const char *name, CUfunction *fn) {
    pthread_mutex_lock(&module_lock);
    for (int i = 0; i < m->n_fns; i++) {
        if (strcmp(m->fns[i].name, name) == 0) {
            *fn = m->fns[i].fn;
            pthread_mutex_unlock(&module_lock);
            return FDY_OK;
        }
    }
    CUresult r = C.cuModuleGetFunction(fn, m->mod, name);
    if (r == 0 && m->n_fns < 16 && strlen(name) < sizeof m->fns[0].name) {
        snprintf(m->fns[m->n_fns].name, sizeof m->fns[0].name, "%s", name);
        m->fns[m->n_fns++].fn = *fn;
    }
    pthread_mutex_unlock(&module_lock);
    if (r != 0) {
        return fdy_fail(FDY_ERR_INVALID, "cuda: no kernel '%s' in the module", name);
    }
    return FDY_OK;
}

/* ---- memory, launches, graphs, events ---- */

fdy_status fdy_cuda_malloc(size_t bytes, uint64_t *dptr) {
    ENSURE();
    CUdeviceptr p = 0;
    CU(C.cuMemAlloc_v2(&p, bytes ? bytes : 4), "cuMemAlloc");
    *dptr = p;
    return FDY_OK;
}

fdy_status fdy_cuda_free(uint64_t dptr) {
    ENSURE();
    if (dptr) {
        CU(C.cuMemFree_v2(dptr), "cuMemFree");
    }
    return FDY_OK;
}

fdy_status fdy_cuda_upload(uint64_t dst, const void *src, size_t bytes) {
    ENSURE();
    if (bytes) {
        CU(C.cuMemcpyHtoDAsync_v2(dst, src, bytes, C.stream), "cuMemcpyHtoD");
        CU(C.cuStreamSynchronize(C.stream), "cuStreamSynchronize");
    }
    return FDY_OK;
}

fdy_status fdy_cuda_download(void *dst, uint64_t src, size_t bytes) {
    ENSURE();
    if (bytes) {
        CU(C.cuMemcpyDtoHAsync_v2(dst, src, bytes, C.stream), "cuMemcpyDtoH");
    }
    CU(C.cuStreamSynchronize(C.stream), "cuStreamSynchronize (kernel or copy failed)");
    return FDY_OK;
}

fdy_status fdy_cuda_copy(uint64_t dst, uint64_t src, size_t bytes) {
    ENSURE();
    if (bytes) {
        CU(C.cuMemcpyDtoDAsync_v2(dst, src, bytes, C.stream), "cuMemcpyDtoD");
    }
    return FDY_OK;
}

fdy_status fdy_cuda_fill(uint64_t dst, uint32_t value, size_t n_words) {
    ENSURE();
    if (n_words) {
        CU(C.cuMemsetD32Async(dst, value, n_words, C.stream), "cuMemsetD32");
    }
    return FDY_OK;
}

fdy_status fdy_cuda_launch(fdy_cuda_module *m, const char *name, const uint32_t grid[3],
                           uint32_t block, void *const *args, int32_t n_args) {
    ENSURE();
    if (!m || !name || !grid) {
        return fdy_fail(FDY_ERR_INVALID, "cuda: launch needs a module, a kernel and a grid");
    }
    if (!grid[0] || !grid[1] || !grid[2] || !block) {
        return FDY_OK; /* nothing to do */
    }
    CUfunction fn;
    fdy_status s = get_function(m, name, &fn);
    if (s) {
        return s;
    }
    (void)n_args;
    CU(C.cuLaunchKernel(fn, grid[0], grid[1], grid[2], block, 1, 1, 0, C.stream,
                        (void **)args, NULL),
       name);
    return FDY_OK;
}

fdy_status fdy_cuda_sync(void) {
    ENSURE();
    CU(C.cuStreamSynchronize(C.stream), "cuStreamSynchronize (kernel failed)");
    return FDY_OK;
}

fdy_status fdy_cuda_capture_begin(void) {
    ENSURE();
    CU(C.cuStreamBeginCapture_v2(C.stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
       "cuStreamBeginCapture");
    return FDY_OK;
}

fdy_status fdy_cuda_capture_end(uint64_t *graph_exec) {
    ENSURE();
    CUgraph g = NULL;
    CUgraphExec e = NULL;
    CU(C.cuStreamEndCapture(C.stream, &g), "cuStreamEndCapture");
    CUresult r = C.cuGraphInstantiateWithFlags(&e, g, 0);
    C.cuGraphDestroy(g);
    if (r != 0) {
        return cu_fail(r, "cuGraphInstantiate");
    }
    *graph_exec = (uint64_t)(uintptr_t)e;
    return FDY_OK;
}

fdy_status fdy_cuda_graph_launch(uint64_t graph_exec) {
    ENSURE();
    CU(C.cuGraphLaunch((CUgraphExec)(uintptr_t)graph_exec, C.stream), "cuGraphLaunch");
    return FDY_OK;
}

fdy_status fdy_cuda_graph_free(uint64_t graph_exec) {
    ENSURE();
    if (graph_exec) {
        CU(C.cuGraphExecDestroy((CUgraphExec)(uintptr_t)graph_exec), "cuGraphExecDestroy");
    }
    return FDY_OK;
}

fdy_status fdy_cuda_event_record(uint64_t *event) {
    ENSURE();
    CUevent e;
    CU(C.cuEventCreate(&e, CU_EVENT_DEFAULT), "cuEventCreate");
    CU(C.cuEventRecord(e, C.stream), "cuEventRecord");
    *event = (uint64_t)(uintptr_t)e;
    return FDY_OK;
}

fdy_status fdy_cuda_event_elapsed(uint64_t start, uint64_t end, float *ms) {
    ENSURE();
    if (!C.cuEventElapsedTime) {
        return fdy_fail(FDY_ERR_UNSUPPORTED, "cuda: no cuEventElapsedTime in the driver");
    }
    CU(C.cuEventSynchronize((CUevent)(uintptr_t)end), "cuEventSynchronize");
    CU(C.cuEventElapsedTime(ms, (CUevent)(uintptr_t)start, (CUevent)(uintptr_t)end),
       "cuEventElapsedTime");
    return FDY_OK;
}

fdy_status fdy_cuda_event_free(uint64_t event) {
    ENSURE();
    CU(C.cuEventDestroy_v2((CUevent)(uintptr_t)event), "cuEventDestroy");
    return FDY_OK;
}
