/* metal.h - the C API of the Metal host (foundry_c/src/gpu/metal.m, built only on macOS).
 *
 * The same shapes as the CUDA host's functions in foundry.h, so pyfoundry/gpu.py drives
 * either through one backend object.  Differences:
 *   - a device address is the CPU address of a shared-storage MTLBuffer's contents (unified
 *     memory); an address inside a buffer (base + offset) names that offset of it, so the
 *     pointer arithmetic the executor does on CUDA addresses works unchanged;
 *   - launch arguments are typed (buffer, int or float): Metal binds buffers with
 *     setBuffer:offset:atIndex: and scalars by value with setBytes:length:atIndex: (the
 *     `constant T &` of FDY_SCALAR in metal/prelude_metal.h); argument i goes to index i;
 *     a buffer address of 0 binds nil (the kernel sees a null pointer);
 *   - launches are encoded into one open command buffer, committed and waited for by
 *     fdy_metal_sync and by every call that reads or writes memory from the CPU;
 *   - compiled libraries are cached in memory only (by content key); no graphs, no events.
 * Every function returns a status with a message; without a device fdy_metal_init returns
 * FDY_ERR_UNSUPPORTED and nothing else in the library is affected.
 */
#ifndef FDY_METAL_HOST_H
#define FDY_METAL_HOST_H

#include "foundry.h"

typedef struct fdy_metal_module fdy_metal_module;

typedef enum fdy_metal_arg_kind {
    FDY_METAL_ARG_BUFFER = 1, /* v.ptr: a device address, or 0 for none */
    FDY_METAL_ARG_INT = 2,    /* v.i */
    FDY_METAL_ARG_FLOAT = 3   /* v.f */
} fdy_metal_arg_kind;

typedef struct fdy_metal_arg {
    int32_t kind; /* fdy_metal_arg_kind */
    union {
        uint64_t ptr;
        int32_t i;
        float f;
    } v;
} fdy_metal_arg;

fdy_status fdy_metal_init(void);           /* FDY_ERR_UNSUPPORTED when there is no device */
const char *fdy_metal_device_name(void);   /* NULL without a device */
const char *fdy_metal_os_version(void);    /* NULL without a device */
/* compile (or fetch) the library of `source`; modules live until the process ends */
fdy_status fdy_metal_module_get(const char *source, fdy_metal_module **out);
const char *fdy_metal_module_key(const fdy_metal_module *m); /* hex content key */
fdy_status fdy_metal_malloc(size_t bytes, uint64_t *dptr);
fdy_status fdy_metal_free(uint64_t dptr); /* dptr: an address fdy_metal_malloc returned */
fdy_status fdy_metal_upload(uint64_t dst, const void *src, size_t bytes);
fdy_status fdy_metal_download(void *dst, uint64_t src, size_t bytes);
fdy_status fdy_metal_copy(uint64_t dst, uint64_t src, size_t bytes);   /* device to device */
fdy_status fdy_metal_fill(uint64_t dst, uint32_t value, size_t n_words); /* poison / zero */
/* dispatch kernel `name` of module m: grid threadgroups of `block` threads (x only) */
fdy_status fdy_metal_launch(fdy_metal_module *m, const char *name, const uint32_t grid[3],
                            uint32_t block, const fdy_metal_arg *args, int32_t n_args);
fdy_status fdy_metal_sync(void); /* commit the open command buffer and wait for it */

#endif
