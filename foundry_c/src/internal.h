/* internal.h - helpers shared by the core's translation units (not part of the public API):
 * error reporting, checked arithmetic and allocation wrappers. */
#ifndef FDY_INTERNAL_H
#define FDY_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "foundry.h"

/* Record a failure for fdy_last_error() and return `status`. */
fdy_status fdy_fail(fdy_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Same, for file errors: also records the byte offset. */
fdy_status fdy_fail_at(fdy_status status, int64_t offset, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void fdy_clear_error(void);

/* a*b without overflow into *out; false on overflow */
static inline bool fdy_mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool fdy_add_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

#endif
