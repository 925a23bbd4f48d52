/* policy.c - the policy registry built from policies/policies.def, lookups by name and type
 * id, and the row-level quantize / dequantize entry points every caller goes through. */
#include <math.h>
#include <string.h>
#include <strings.h>

#include "dialect.h"
#include "internal.h"
#include "policy.h"

static const struct fdy_policy *const fdy_registry[] = {
#define FDY_POLICY(name, id) &fdy_policy_##name,
#include "policies.def"
#undef FDY_POLICY
};

#define FDY_N_POLICIES ((int32_t)(sizeof fdy_registry / sizeof fdy_registry[0]))

int32_t fdy_policy_count(void) {
    return FDY_N_POLICIES;
}

const fdy_policy *fdy_policy_at(int32_t index) {
    if (index < 0 || index >= FDY_N_POLICIES) {
        fdy_fail(FDY_ERR_RANGE, "policy index %d out of range [0, %d)", index, FDY_N_POLICIES);
        return NULL;
    }
    return fdy_registry[index];
}

const fdy_policy *fdy_policy_by_name(const char *name) {
    if (!name) {
        return NULL;
    }
    for (int32_t i = 0; i < FDY_N_POLICIES; i++) {
        if (strcasecmp(fdy_registry[i]->name, name) == 0) {
            return fdy_registry[i];
        }
    }
    return NULL;
}

const fdy_policy *fdy_policy_by_type(int32_t type_id) {
    for (int32_t i = 0; i < FDY_N_POLICIES; i++) {
        if (fdy_registry[i]->type == type_id) {
            return fdy_registry[i];
        }
    }
    return NULL;
}

const char *fdy_policy_name(const fdy_policy *p) { return p->name; }
int32_t fdy_policy_type(const fdy_policy *p) { return p->type; }
int64_t fdy_policy_block_elems(const fdy_policy *p) { return p->block_elems; }
int64_t fdy_policy_block_bytes(const fdy_policy *p) { return p->block_bytes; }
int64_t fdy_policy_sub_elems(const fdy_policy *p) { return p->sub_elems; }
int fdy_policy_can_quantize(const fdy_policy *p) { return p->quantize != NULL; }
int fdy_policy_is_gguf(const fdy_policy *p) { return (p->flags & FDY_POLICY_GGUF) != 0; }
int fdy_policy_is_activation(const fdy_policy *p) { return (p->flags & FDY_POLICY_ACT) != 0; }
const char *fdy_policy_dot_type(const fdy_policy *p) { return p->dot_type; }

double fdy_policy_bits_per_weight(const fdy_policy *p) {
    return 8.0 * (double)p->block_bytes / (double)p->block_elems;
}

double fdy_policy_tolerance(const fdy_policy *p, const char *what) {
    if (what && strcmp(what, "roundtrip") == 0) {
        return p->tol_roundtrip;
    }
    if (what && strcmp(what, "f32") == 0) {
        return p->tol_f32;
    }
    if (what && strcmp(what, "q8") == 0) {
        return p->tol_q8;
    }
    fdy_fail(FDY_ERR_INVALID, "unknown tolerance '%s' (expected roundtrip, f32 or q8)",
             what ? what : "(null)");
    return -1.0;
}

int64_t fdy_policy_row_bytes(const fdy_policy *p, int64_t n) {
    if (n < 0 || n % p->block_elems != 0) {
        fdy_fail(FDY_ERR_INVALID,
                 "%s: %lld elements is not a multiple of the block size %d", p->name,
                 (long long)n, p->block_elems);
        return -1;
    }
    uint64_t bytes;
    if (!fdy_mul_ok((uint64_t)(n / p->block_elems), (uint64_t)p->block_bytes, &bytes) ||
        bytes > (uint64_t)INT64_MAX) {
        fdy_fail(FDY_ERR_INVALID, "%s: %lld elements overflow the size computation", p->name,
                 (long long)n);
        return -1;
    }
    return (int64_t)bytes;
}

fdy_status fdy_policy_dequantize(const fdy_policy *p, const void *src, float *dst, int64_t n) {
    if (fdy_policy_row_bytes(p, n) < 0) {
        return FDY_ERR_INVALID;
    }
    if (p->dequantize_fast) {
        p->dequantize_fast(src, dst, n);
        return FDY_OK;
    }
    const uint8_t *b = (const uint8_t *)src;
    const int64_t nb = n / p->block_elems;
    const int subs = p->block_elems / p->sub_elems;
    for (int64_t i = 0; i < nb; i++) {
        for (int s = 0; s < subs; s++) {
            p->decode(b, s, dst + s * p->sub_elems);
        }
        b += p->block_bytes;
        dst += p->block_elems;
    }
    return FDY_OK;
}

fdy_status fdy_policy_quantize(const fdy_policy *p, const float *src, void *dst, int64_t n) {
    if (!p->quantize) {
        return fdy_fail(FDY_ERR_UNSUPPORTED,
                        "%s is a dequantize-only format: it has no quantizer", p->name);
    }
    if (fdy_policy_row_bytes(p, n) < 0) {
        return FDY_ERR_INVALID;
    }
    p->quantize(src, dst, n);
    return FDY_OK;
}

/* ---- float conversions used by the quantizers ----------------------------------------- */

uint16_t fdy_float_to_half(float f) {
    uint32_t x = fdy_float_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) { /* inf or nan */
        uint32_t man = ax & 0x7fffffu;
        return (uint16_t)(sign | 0x7c00u | (man ? (0x200u | (man >> 13)) : 0));
    }
    if (ax >= 0x477ff000u) { /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    }
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        /* value * 2^24 rounded to nearest even gives the subnormal mantissa */
        float a = fdy_as_float(ax);
        float scaled = a * 16777216.0f; /* exact: power of two */
        /* round half to even */
        float r = nearbyintf(scaled);
        return (uint16_t)(sign | (uint32_t)r);
    }
    /* normal: rebias the exponent, round the mantissa to 10 bits, ties to even */
    uint32_t mant_odd = (ax >> 13) & 1u;
    ax += 0x0fffu + mant_odd;
    ax -= (uint32_t)(112u << 23);
    return (uint16_t)(sign | (ax >> 13));
}

uint16_t fdy_float_to_bf16(float f) {
    uint32_t x = fdy_float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((x >> 16) | 64u); /* quiet nan */
    }
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

int fdy_policy_has_to_i8(const fdy_policy *p) {
    return p->to_i8 != NULL;
}

fdy_status fdy_policy_to_i8(const fdy_policy *p, const void *src, int8_t *q, float *scale,
                            float *min, int64_t n) {
    if (!p->to_i8) {
        return fdy_fail(FDY_ERR_UNSUPPORTED, "%s has no int8 unpacking (to_i8)", p->name);
    }
    if (fdy_policy_row_bytes(p, n) < 0) {
        return FDY_ERR_INVALID;
    }
    p->to_i8(src, q, scale, min, n);
    return FDY_OK;
}

int fdy_policy_has_vec_dot_f32(const fdy_policy *p) {
    return p->vec_dot_f32 != NULL;
}

int fdy_policy_has_vec_dot_rows(const fdy_policy *p) {
    return p->vec_dot_rows != NULL;
}

int fdy_policy_pack_rows(const fdy_policy *p) {
    return p->pack && p->vec_dot_packed ? p->pack_rows : 0;
}

int fdy_policy_amx_chunk_bytes(const fdy_policy *p) {
    return p->pack_amx && p->vec_dot_f32_amx ? p->amx_chunk_bytes : 0;
}

fdy_status fdy_policy_vec_dot_f32(const fdy_policy *p, const void *w, const float *x, int64_t n,
                                  float *out) {
    if (!p->vec_dot_f32) {
        return fdy_fail(FDY_ERR_UNSUPPORTED, "%s has no fused f32 dot (vec_dot_f32)", p->name);
    }
    if (fdy_policy_row_bytes(p, n) < 0) {
        return FDY_ERR_INVALID;
    }
    *out = p->vec_dot_f32(w, x, n);
    return FDY_OK;
}

int fdy_policy_has_vec_dot_f32_rows(const fdy_policy *p) {
    return p->vec_dot_f32_rows != NULL;
}

fdy_status fdy_policy_vec_dot_f32_rows(const fdy_policy *p, const void *w, size_t row_bytes,
                                       const float *x, int64_t n, float *out, int64_t rows) {
    if (!p->vec_dot_f32) {
        return fdy_fail(FDY_ERR_UNSUPPORTED, "%s has no fused f32 dot (vec_dot_f32)", p->name);
    }
    const int64_t rb = fdy_policy_row_bytes(p, n);
    if (rb < 0) {
        return FDY_ERR_INVALID;
    }
    if (rows < 0 || row_bytes < (size_t)rb) {
        return fdy_fail(FDY_ERR_INVALID, "%s: %lld rows of %zu bytes, a row of %lld elements "
                        "needs %lld", p->name, (long long)rows, row_bytes, (long long)n,
                        (long long)rb);
    }
    fdy_policy_dot_f32_rows(p, w, row_bytes, x, n, out, rows);
    return FDY_OK;
}

void fdy_policy_dot_f32_rows(const fdy_policy *p, const void *w, size_t row_bytes,
                             const float *x, int64_t n, float *out, int64_t rows) {
    if (p->vec_dot_f32_rows) {
        p->vec_dot_f32_rows(w, row_bytes, x, n, out, rows);
        return;
    }
    for (int64_t r = 0; r < rows; r++) {
        out[r] = p->vec_dot_f32((const uint8_t *)w + (size_t)r * row_bytes, x, n);
    }
}
