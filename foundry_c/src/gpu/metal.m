/* metal.m - the Metal host (macOS only, Objective-C with ARC): the system default device, one
 * command queue, shared-storage buffers addressed by their CPU address, libraries compiled at
 * run time from the composed MSL source (foundry_c/src/gpu/compose.c, target "metal") and
 * cached in memory by content key with one pipeline state per kernel, and dispatches encoded
 * into one open command buffer until a sync.  The C API is metal.h.
 *
 * Only the in-memory cache exists: compiled libraries are not kept on disk (no
 * MTLBinaryArchive), so each process compiles each source once.  Every failure is a status
 * with a message; without a device fdy_metal_init returns FDY_ERR_UNSUPPORTED.
 *
 * On Linux tests/test_metal_host.py checks this file with clang -fsyntax-only against
 * tests/c/objc_metal_stub.h (FDY_METAL_OBJC_STUB): a syntax and type check, nothing more.
 */
#ifndef FDY_METAL_OBJC_STUB
#import <CommonCrypto/CommonDigest.h>
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>
#endif

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "metal.h"

#if !__has_feature(objc_arc)
#error "metal.m is built with -fobjc-arc (setup.py adds it on macOS)"
#endif

/* ---- state: one device, one queue, one open command buffer ---- */

static id<MTLDevice> device;
static id<MTLCommandQueue> queue;
static id<MTLCommandBuffer> cmd;          /* open command buffer, nil when none */
static id<MTLComputeCommandEncoder> enc;  /* open compute encoder of cmd, nil when none */

static struct {
    char name[256];
    char os[256];
    fdy_status init_status;
    char init_error[512];
} M;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
/* one lock for the buffer table, the module list and the command buffer */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static const char *utf8(NSString *s) {
    const char *p = s ? [s UTF8String] : NULL;
    return p ? p : "";
}

static void do_init(void) {
    @autoreleasepool {
        device = MTLCreateSystemDefaultDevice();
        if (!device) {
            M.init_status = FDY_ERR_UNSUPPORTED;
            snprintf(M.init_error, sizeof M.init_error,
                     "metal: no Metal device (MTLCreateSystemDefaultDevice returned nil)");
            return;
        }
        queue = [device newCommandQueue];
        if (!queue) {
            device = nil;
            M.init_status = FDY_ERR_STATE;
            snprintf(M.init_error, sizeof M.init_error, "metal: could not create a command queue");
            return;
        }
        snprintf(M.name, sizeof M.name, "%s", utf8([device name]));
        snprintf(M.os, sizeof M.os, "%s",
                 utf8([[NSProcessInfo processInfo] operatingSystemVersionString]));
        M.init_status = FDY_OK;
    }
}

fdy_status fdy_metal_init(void) {
    pthread_once(&init_once, do_init);
    if (M.init_status != FDY_OK) {
        return fdy_fail(M.init_status, "%s", M.init_error);
    }
    return FDY_OK;
}

#define ENSURE()                                                                             \
    do {                                                                                     \
        fdy_status s_ = fdy_metal_init();                                                    \
        if (s_) {                                                                            \
            return s_;                                                                       \
        }                                                                                    \
    } while (0)

const char *fdy_metal_device_name(void) {
    return fdy_metal_init() == FDY_OK ? M.name : NULL;
}

const char *fdy_metal_os_version(void) {
    return fdy_metal_init() == FDY_OK ? M.os : NULL;
}

/* ---- command buffer (lock held) ---- */

static fdy_status open_compute(id<MTLComputeCommandEncoder> *out) {
    if (!cmd) {
        cmd = [queue commandBuffer];
        if (!cmd) {
            return fdy_fail(FDY_ERR_STATE, "metal: could not create a command buffer");
        }
    }
    if (!enc) {
        enc = [cmd computeCommandEncoder];
        if (!enc) {
            return fdy_fail(FDY_ERR_STATE, "metal: could not create a compute encoder");
        }
    }
    *out = enc;
    return FDY_OK;
}

/* a blit encoder in the open command buffer, after the dispatches encoded so far; the caller
 * ends it */
static fdy_status open_blit(id<MTLBlitCommandEncoder> *out) {
    if (enc) {
        [enc endEncoding];
        enc = nil;
    }
    if (!cmd) {
        cmd = [queue commandBuffer];
        if (!cmd) {
            return fdy_fail(FDY_ERR_STATE, "metal: could not create a command buffer");
        }
    }
    *out = [cmd blitCommandEncoder];
    if (!*out) {
        return fdy_fail(FDY_ERR_STATE, "metal: could not create a blit encoder");
    }
    return FDY_OK;
}

/* commit the open command buffer and wait for it: afterwards the CPU may touch any buffer */
static fdy_status flush_wait(void) {
    if (enc) {
        [enc endEncoding];
        enc = nil;
    }
    if (!cmd) {
        return FDY_OK;
    }
    id<MTLCommandBuffer> cb = cmd;
    cmd = nil;
    [cb commit];
    [cb waitUntilCompleted];
    if ([cb status] == MTLCommandBufferStatusError) {
        return fdy_fail(FDY_ERR_STATE, "metal: command buffer failed (kernel or copy): %s",
                        utf8([[cb error] localizedDescription]));
    }
    return FDY_OK;
}

/* ---- buffers: a table sorted by base address ---- */

typedef struct buf_entry {
    uint64_t base;   /* CPU address of the contents */
    size_t size;     /* bytes */
    void *buf;       /* id<MTLBuffer>, retained (__bridge_retained) */
} buf_entry;

static buf_entry *bufs;
static size_t n_bufs, cap_bufs;

/* index of the entry holding [addr, addr + bytes), or -1 */
static ptrdiff_t find_buf(uint64_t addr, size_t bytes) {
    size_t lo = 0, hi = n_bufs;
    while (lo < hi) { /* first entry with base > addr */
        size_t mid = lo + (hi - lo) / 2;
        if (bufs[mid].base <= addr) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo == 0) {
        return -1;
    }
    buf_entry *e = &bufs[lo - 1];
    uint64_t off = addr - e->base;
    if (off >= e->size || bytes > e->size - off) {
        return -1;
    }
    return (ptrdiff_t)(lo - 1);
}

static fdy_status resolve(uint64_t addr, size_t bytes, const char *what,
                          id<MTLBuffer> *buf, size_t *offset) {
    ptrdiff_t i = find_buf(addr, bytes ? bytes : 1);
    if (i < 0) {
        return fdy_fail(FDY_ERR_INVALID,
                        "metal: %s: 0x%llx (+%zu bytes) is not inside a live device buffer",
                        what, (unsigned long long)addr, bytes);
    }
    *buf = (__bridge id<MTLBuffer>)bufs[i].buf;
    *offset = (size_t)(addr - bufs[i].base);
    return FDY_OK;
}

fdy_status fdy_metal_malloc(size_t bytes, uint64_t *dptr) {
    ENSURE();
    if (!dptr) {
        return fdy_fail(FDY_ERR_INVALID, "metal: malloc needs an output");
    }
    @autoreleasepool {
        size_t n = bytes ? bytes : 4;
        id<MTLBuffer> b = [device newBufferWithLength:n options:MTLResourceStorageModeShared];
        if (!b || ![b contents]) {
            return fdy_fail(FDY_ERR_NOMEM, "metal: could not allocate %zu bytes (device "
                            "limit %llu per buffer)", n,
                            (unsigned long long)[device maxBufferLength]);
        }
        uint64_t base = (uint64_t)(uintptr_t)[b contents];
        pthread_mutex_lock(&lock);
        if (n_bufs == cap_bufs) {
            size_t cap = cap_bufs ? 2 * cap_bufs : 64;
            buf_entry *nb = (buf_entry *)realloc(bufs, cap * sizeof *nb);
            if (!nb) {
                pthread_mutex_unlock(&lock);
                return fdy_fail(FDY_ERR_NOMEM, "metal: out of memory (buffer table)");
            }
            bufs = nb;
            cap_bufs = cap;
        }
        size_t at = 0;
        while (at < n_bufs && bufs[at].base < base) {
            at++;
        }
        memmove(bufs + at + 1, bufs + at, (n_bufs - at) * sizeof *bufs);
        bufs[at].base = base;
        bufs[at].size = n;
        bufs[at].buf = (__bridge_retained void *)b;
        n_bufs++;
        pthread_mutex_unlock(&lock);
        *dptr = base;
    }
    return FDY_OK;
}

fdy_status fdy_metal_free(uint64_t dptr) {
    ENSURE();
    if (!dptr) {
        return FDY_OK;
    }
    pthread_mutex_lock(&lock);
    ptrdiff_t i = find_buf(dptr, 1);
    if (i < 0 || bufs[i].base != dptr) {
        pthread_mutex_unlock(&lock);
        return fdy_fail(FDY_ERR_INVALID, "metal: free: 0x%llx is not a live device buffer",
                        (unsigned long long)dptr);
    }
    void *b = bufs[i].buf;
    memmove(bufs + i, bufs + i + 1, (n_bufs - (size_t)i - 1) * sizeof *bufs);
    n_bufs--;
    pthread_mutex_unlock(&lock);
    /* a command buffer that still uses it holds its own reference */
    id<MTLBuffer> released = (__bridge_transfer id<MTLBuffer>)b; /* ARC releases it */
    (void)released;
    return FDY_OK;
}

fdy_status fdy_metal_upload(uint64_t dst, const void *src, size_t bytes) {
    ENSURE();
    if (!bytes) {
        return FDY_OK;
    }
    @autoreleasepool {
        pthread_mutex_lock(&lock);
        id<MTLBuffer> b = nil;
        size_t off = 0;
        fdy_status s = resolve(dst, bytes, "upload", &b, &off);
        if (s == FDY_OK) {
            s = flush_wait(); /* earlier dispatches may still read or write it */
        }
        if (s == FDY_OK) {
            memcpy((char *)[b contents] + off, src, bytes);
        }
        pthread_mutex_unlock(&lock);
        return s;
    }
}

fdy_status fdy_metal_download(void *dst, uint64_t src, size_t bytes) {
    ENSURE();
    @autoreleasepool {
        pthread_mutex_lock(&lock);
        fdy_status s = flush_wait();
        if (s == FDY_OK && bytes) {
            id<MTLBuffer> b = nil;
            size_t off = 0;
            s = resolve(src, bytes, "download", &b, &off);
            if (s == FDY_OK) {
                memcpy(dst, (const char *)[b contents] + off, bytes);
            }
        }
        pthread_mutex_unlock(&lock);
        return s;
    }
}

fdy_status fdy_metal_copy(uint64_t dst, uint64_t src, size_t bytes) {
    ENSURE();
    if (!bytes) {
        return FDY_OK;
    }
    @autoreleasepool {
        pthread_mutex_lock(&lock);
        id<MTLBuffer> db = nil, sb = nil;
        size_t doff = 0, soff = 0;
        id<MTLBlitCommandEncoder> blit = nil;
        fdy_status s = resolve(dst, bytes, "copy destination", &db, &doff);
        if (s == FDY_OK) {
            s = resolve(src, bytes, "copy source", &sb, &soff);
        }
        if (s == FDY_OK) {
            s = open_blit(&blit);
        }
        if (s == FDY_OK) {
            [blit copyFromBuffer:sb sourceOffset:soff toBuffer:db destinationOffset:doff
                            size:bytes];
            [blit endEncoding];
        }
        pthread_mutex_unlock(&lock);
        return s;
    }
}

fdy_status fdy_metal_fill(uint64_t dst, uint32_t value, size_t n_words) {
    ENSURE();
    if (!n_words) {
        return FDY_OK;
    }
    if (n_words > SIZE_MAX / 4) {
        return fdy_fail(FDY_ERR_INVALID, "metal: fill: %zu words is too many", n_words);
    }
    @autoreleasepool {
        pthread_mutex_lock(&lock);
        id<MTLBuffer> b = nil;
        size_t off = 0;
        fdy_status s = resolve(dst, 4 * n_words, "fill", &b, &off);
        uint8_t byte = (uint8_t)value;
        int uniform = value == (uint32_t)byte * 0x01010101u;
        if (s == FDY_OK && uniform) { /* zero and the like: a blit in the command stream */
            id<MTLBlitCommandEncoder> blit = nil;
            s = open_blit(&blit);
            if (s == FDY_OK) {
                [blit fillBuffer:b range:NSMakeRange(off, 4 * n_words) value:byte];
                [blit endEncoding];
            }
        } else if (s == FDY_OK) { /* a word pattern (NaN poison): after the pending work */
            s = flush_wait();
            if (s == FDY_OK) {
                uint32_t *p = (uint32_t *)((char *)[b contents] + off);
                for (size_t i = 0; i < n_words; i++) {
                    p[i] = value;
                }
            }
        }
        pthread_mutex_unlock(&lock);
        return s;
    }
}

fdy_status fdy_metal_sync(void) {
    ENSURE();
    @autoreleasepool {
        pthread_mutex_lock(&lock);
        fdy_status s = flush_wait();
        pthread_mutex_unlock(&lock);
        return s;
    }
}

/* ---- modules: compile, cache ---- */

#define MAX_PIPELINES 16

struct fdy_metal_module {
    char key[65];
    void *lib; /* id<MTLLibrary>, retained */
    struct pipe_entry {
        char name[64];
        void *pso; /* id<MTLComputePipelineState>, retained */
    } pipes[MAX_PIPELINES];
    int n_pipes;
    fdy_metal_module *next;
};

static fdy_metal_module *modules;

/* the compile options every library gets; part of the content key */
static const char *const compile_info = "fastMathEnabled=NO";

static MTLCompileOptions *compile_options(void) {
    MTLCompileOptions *o = [[MTLCompileOptions alloc] init];
    /* IEEE semantics: no reassociation or approximate functions (the policy decode rounds as
     * the CPU does).  Deprecated in favour of mathMode from macOS 15; still honoured. */
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
    o.fastMathEnabled = NO;
#pragma clang diagnostic pop
    return o;
}

/* sha256 of (device, OS version, options, source) in hex */
static void content_key(const char *source, char out[65]) {
    CC_SHA256_CTX h;
    unsigned char d[CC_SHA256_DIGEST_LENGTH];
    char info[600];
    snprintf(info, sizeof info, "metal|%s|%s|%s", M.name, M.os, compile_info);
    CC_SHA256_Init(&h);
    CC_SHA256_Update(&h, info, (CC_LONG)(strlen(info) + 1));
    size_t n = strlen(source);
    const char *p = source;
    while (n) { /* CC_LONG is 32 bits */
        CC_LONG k = n > 0x40000000u ? 0x40000000u : (CC_LONG)n;
        CC_SHA256_Update(&h, p, k);
        p += k;
        n -= k;
    }
    CC_SHA256_Final(d, &h);
    for (int i = 0; i < CC_SHA256_DIGEST_LENGTH; i++) {
        snprintf(out + 2 * i, 3, "%02x", d[i]);
    }
}

fdy_status fdy_metal_module_get(const char *source, fdy_metal_module **out) {
    ENSURE();
    if (!source || !out) {
        return fdy_fail(FDY_ERR_INVALID, "metal: module needs a source");
    }
    char key[65];
    content_key(source, key);
    @autoreleasepool {
        pthread_mutex_lock(&lock);
        for (fdy_metal_module *m = modules; m; m = m->next) {
            if (strcmp(m->key, key) == 0) {
                *out = m;
                pthread_mutex_unlock(&lock);
                return FDY_OK;
            }
        }
        NSString *src = [NSString stringWithUTF8String:source];
        if (!src) {
            pthread_mutex_unlock(&lock);
            return fdy_fail(FDY_ERR_INVALID, "metal: the source is not valid UTF-8");
        }
        NSError *err = nil;
        id<MTLLibrary> lib = [device newLibraryWithSource:src options:compile_options()
                                                    error:&err];
        if (!lib) {
            pthread_mutex_unlock(&lock);
            return fdy_fail(FDY_ERR_INVALID, "metal: compile failed: %.3000s",
                            err ? utf8([err localizedDescription]) : "no log");
        }
        fdy_metal_module *m = (fdy_metal_module *)calloc(1, sizeof *m);
        if (!m) {
            pthread_mutex_unlock(&lock);
            return fdy_fail(FDY_ERR_NOMEM, "metal: out of memory");
        }
        memcpy(m->key, key, sizeof key);
        m->lib = (__bridge_retained void *)lib;
        m->next = modules;
        modules = m;
        *out = m;
        pthread_mutex_unlock(&lock);
    }
    return FDY_OK;
}

const char *fdy_metal_module_key(const fdy_metal_module *m) {
    return m ? m->key : NULL;
}

/* the pipeline state of kernel `name` (lock held) */
static fdy_status get_pipeline(fdy_metal_module *m, const char *name,
                               id<MTLComputePipelineState> *out) {
    for (int i = 0; i < m->n_pipes; i++) {
        if (strcmp(m->pipes[i].name, name) == 0) {
            *out = (__bridge id<MTLComputePipelineState>)m->pipes[i].pso;
            return FDY_OK;
        }
    }
    id<MTLLibrary> lib = (__bridge id<MTLLibrary>)m->lib;
    NSString *fname = [NSString stringWithUTF8String:name];
    id<MTLFunction> fn = fname ? [lib newFunctionWithName:fname] : nil;
    if (!fn) {
        return fdy_fail(FDY_ERR_INVALID, "metal: no kernel '%s' in the module", name);
    }
    NSError *err = nil;
    id<MTLComputePipelineState> pso = [device newComputePipelineStateWithFunction:fn
                                                                            error:&err];
    if (!pso) {
        return fdy_fail(FDY_ERR_STATE, "metal: pipeline of '%s' failed: %.2000s", name,
                        err ? utf8([err localizedDescription]) : "no log");
    }
    /* the templates assume 32-wide SIMD groups (FDY_SIMD_WIDTH, lane = tid & 31) */
    if ([pso threadExecutionWidth] != 32) {
        return fdy_fail(FDY_ERR_UNSUPPORTED, "metal: '%s' runs %lu-wide SIMD groups on %s; "
                        "the kernels need 32", name,
                        (unsigned long)[pso threadExecutionWidth], M.name);
    }
    if (m->n_pipes < MAX_PIPELINES && strlen(name) < sizeof m->pipes[0].name) {
        snprintf(m->pipes[m->n_pipes].name, sizeof m->pipes[0].name, "%s", name);
        m->pipes[m->n_pipes++].pso = (__bridge_retained void *)pso;
    }
    *out = pso;
    return FDY_OK;
}

/* ---- dispatch ---- */

fdy_status fdy_metal_launch(fdy_metal_module *m, const char *name, const uint32_t grid[3],
                            uint32_t block, const fdy_metal_arg *args, int32_t n_args) {
    ENSURE();
    if (!m || !name || !grid || (n_args && !args)) {
        return fdy_fail(FDY_ERR_INVALID, "metal: launch needs a module, a kernel and a grid");
    }
    if (n_args < 0 || n_args > 31) {
        return fdy_fail(FDY_ERR_INVALID, "metal: %d arguments (Metal binds at most 31)",
                        (int)n_args);
    }
    if (!grid[0] || !grid[1] || !grid[2] || !block) {
        return FDY_OK; /* nothing to do */
    }
    @autoreleasepool {
        pthread_mutex_lock(&lock);
        id<MTLComputePipelineState> pso = nil;
        id<MTLComputeCommandEncoder> e = nil;
        fdy_status s = get_pipeline(m, name, &pso);
        if (s == FDY_OK && block > [pso maxTotalThreadsPerThreadgroup]) {
            s = fdy_fail(FDY_ERR_UNSUPPORTED, "metal: '%s' with %u threads per threadgroup; "
                         "this pipeline allows %lu", name, block,
                         (unsigned long)[pso maxTotalThreadsPerThreadgroup]);
        }
        if (s == FDY_OK) {
            s = open_compute(&e);
        }
        if (s == FDY_OK) {
            [e setComputePipelineState:pso];
        }
        for (int32_t i = 0; s == FDY_OK && i < n_args; i++) {
            const fdy_metal_arg *a = &args[i];
            if (a->kind == FDY_METAL_ARG_BUFFER) {
                if (!a->v.ptr) {
                    [e setBuffer:nil offset:0 atIndex:(NSUInteger)i];
                    continue;
                }
                id<MTLBuffer> b = nil;
                size_t off = 0;
                s = resolve(a->v.ptr, 1, name, &b, &off);
                if (s == FDY_OK) {
                    [e setBuffer:b offset:off atIndex:(NSUInteger)i];
                }
            } else if (a->kind == FDY_METAL_ARG_INT) {
                [e setBytes:&a->v.i length:sizeof a->v.i atIndex:(NSUInteger)i];
            } else if (a->kind == FDY_METAL_ARG_FLOAT) {
                [e setBytes:&a->v.f length:sizeof a->v.f atIndex:(NSUInteger)i];
            } else {
                s = fdy_fail(FDY_ERR_INVALID, "metal: %s: argument %d has unknown kind %d", name,
                             (int)i, (int)a->kind);
            }
        }
        if (s == FDY_OK) {
            [e dispatchThreadgroups:MTLSizeMake(grid[0], grid[1], grid[2])
                threadsPerThreadgroup:MTLSizeMake(block, 1, 1)];
        }
        pthread_mutex_unlock(&lock);
        return s;
    }
}
