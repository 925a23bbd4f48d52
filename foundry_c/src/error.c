/* error.c - the thread-local last-error message and offset behind fdy_last_error(). */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char fdy_error_message[512];
static _Thread_local int64_t fdy_error_offset = -1;

const char *fdy_last_error(void) {
    return fdy_error_message[0] ? fdy_error_message : "no error";
}

int64_t fdy_last_error_offset(void) {
    return fdy_error_offset;
}

const char *fdy_version(void) {
    return "0.1.0";
}

void fdy_clear_error(void) {
    fdy_error_message[0] = 0;
    fdy_error_offset = -1;
}

fdy_status fdy_fail(fdy_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fdy_error_message, sizeof fdy_error_message, fmt, ap);
    va_end(ap);
    fdy_error_offset = -1;
    return status;
}

fdy_status fdy_fail_at(fdy_status status, int64_t offset, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(fdy_error_message, sizeof fdy_error_message, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof fdy_error_message) {
        snprintf(fdy_error_message + n, sizeof fdy_error_message - (size_t)n,
                 " (at byte offset %lld)", (long long)offset);
    }
    fdy_error_offset = offset;
    return status;
}
