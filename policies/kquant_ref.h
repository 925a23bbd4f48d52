/* kquant_ref.h - host-only helpers shared by the reference quantizers of the K-quant and
 * IQ4 policy files (q2_k ... q6_k, iq4_nl, iq4_xs).
 *
 * These reproduce, operation for operation, the float32 arithmetic of llama.cpp's reference
 * quantizers (ggml-quants.c), so that the bytes we write are identical to theirs:
 *   fdy_kq_qx          make_qx_quants with rmse_type 1 (weights x^2): symmetric, scale search
 *   fdy_kq_q3          make_q3_quants with do_rmse: symmetric, coordinate-descent refinement
 *   fdy_kq_qkx2        make_qkx2_quants: asymmetric (scale, min) search
 *   fdy_kq_scale_min_put: the 12-byte packing of eight 6-bit scales and mins (Q4_K, Q5_K)
 *   fdy_iq4_best_index, fdy_iq4_block_scale: the non-linear 4-bit grid lookup and the per-32
 *                      scale search used by IQ4_NL and IQ4_XS
 * Every expression keeps llama.cpp's evaluation order; the build uses -ffp-contract=off so that
 * no multiply-add is fused.  Integers enter float arithmetic through an explicit (float) cast
 * at the same place C's usual conversions put it.
 *
 * Include only inside `#ifdef FDY_HOST`, after policy.h.
 */
#ifndef FDY_KQUANT_REF_H
#define FDY_KQUANT_REF_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "policy.h"

/* groups whose largest magnitude is below this are treated as all zero */
#define FDY_KQ_GROUP_EPS 1e-15f

static inline int fdy_kq_clamp(int v, int lo, int hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

/* Symmetric quantization of n values to the levels [-nmax, nmax-1] with weights x^2 (or qw
 * when given).  Starts from the scale that maps the largest-magnitude value to -nmax, then
 * tries 18 nearby scales and keeps the one with the best weighted least-squares fit.
 * Writes L[i] = level + nmax (0 .. 2*nmax-1) and returns the scale. */
static float fdy_kq_qx(int n, int nmax, const float *x, int8_t *L, const float *qw) {
    float amax = 0.0f, vmax = 0.0f;
    for (int i = 0; i < n; i++) {
        const float a = fabsf(x[i]);
        if (a > amax) {
            amax = a;
            vmax = x[i];
        }
    }
    if (amax < FDY_KQ_GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)(-nmax) / vmax;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = fdy_kq_clamp(fdy_nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        const float w = qw ? qw[i] : x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int step = -9; step <= 9; step++) {
        if (step == 0) {
            continue;
        }
        iscale = -((float)nmax + 0.1f * (float)step) / vmax;
        sumlx = 0.0f;
        suml2 = 0.0f;
        for (int i = 0; i < n; i++) {
            const int l = fdy_kq_clamp(fdy_nearest_int(iscale * x[i]), -nmax, nmax - 1);
            const float w = qw ? qw[i] : x[i] * x[i];
            sumlx += w * x[i] * (float)l;
            suml2 += w * (float)l * (float)l;
        }
        if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                const int l = fdy_kq_clamp(fdy_nearest_int(iscale * x[i]), -nmax, nmax - 1);
                L[i] = (int8_t)(l + nmax);
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Symmetric quantization to [-nmax, nmax-1] with weights x^2: rounds at the scale that maps
 * the largest-magnitude value to -nmax, then up to 5 sweeps that move single levels whenever
 * the optimal-scale fit improves.  Writes L[i] = level + nmax and returns the scale. */
static float fdy_kq_q3(int n, int nmax, const float *x, int8_t *L) {
    float amax = 0.0f, vmax = 0.0f;
    for (int i = 0; i < n; i++) {
        const float a = fabsf(x[i]);
        if (a > amax) {
            amax = a;
            vmax = x[i];
        }
    }
    if (amax < FDY_KQ_GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    const float iscale = (float)(-nmax) / vmax;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = fdy_kq_clamp(fdy_nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    for (int sweep = 0; sweep < 5; sweep++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * (float)L[i];
            if (slx > 0.0f) {
                float sl2 = suml2 - w * (float)L[i] * (float)L[i];
                const int nl = fdy_kq_clamp(fdy_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (nl != L[i]) {
                    slx += w * x[i] * (float)nl;
                    sl2 += w * (float)nl * (float)nl;
                    if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)nl;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) {
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        L[i] = (int8_t)(L[i] + nmax);
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Asymmetric quantization x ~ scale * L - min with L in [0, nmax], weighted error (absolute
 * when use_mad, else squared).  Starts from the min/max range, then for nstep+1 candidate
 * inverse scales (rmin + rdelta*k + nmax) / range solves the weighted least-squares (scale,
 * min) pair and keeps the best.  Writes L, stores the (non-negative) offset in *the_min and
 * returns the scale.  aux is scratch of n bytes. */
static float fdy_kq_qkx2(int n, int nmax, const float *x, const float *w, uint8_t *L,
                         float *the_min, uint8_t *aux, float rmin, float rdelta, int nstep,
                         int use_mad) {
    float lo = x[0], hi = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) {
            lo = x[i];
        }
        if (x[i] > hi) {
            hi = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (lo > 0.0f) {
        lo = 0.0f;
    }
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *the_min = -lo;
        return 0.0f;
    }
    float iscale = (float)nmax / (hi - lo);
    float scale = 1.0f / iscale;
    float best_err = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = fdy_kq_clamp(fdy_nearest_int(iscale * (x[i] - lo)), 0, nmax);
        L[i] = (uint8_t)l;
        float diff = scale * (float)l + lo - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_err += w[i] * diff;
    }
    for (int step = 0; step <= nstep; step++) {
        iscale = (rmin + rdelta * (float)step + (float)nmax) / (hi - lo);
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int i = 0; i < n; i++) {
            const int l = fdy_kq_clamp(fdy_nearest_int(iscale * (x[i] - lo)), 0, nmax);
            aux[i] = (uint8_t)l;
            const float fl = (float)l;
            sum_l += w[i] * fl;
            sum_l2 += w[i] * fl * fl;
            sum_xl += w[i] * fl * x[i];
        }
        const float det = sum_w * sum_l2 - sum_l * sum_l;
        if (det > 0.0f) {
            float s = (sum_w * sum_xl - sum_x * sum_l) / det;
            float m = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if (m > 0.0f) {
                m = 0.0f;
                s = sum_xl / sum_l2;
            }
            float err = 0.0f;
            for (int i = 0; i < n; i++) {
                float diff = s * (float)aux[i] + m - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                err += w[i] * diff;
            }
            if (err < best_err) {
                memcpy(L, aux, (size_t)n);
                best_err = err;
                scale = s;
                lo = m;
            }
        }
    }
    *the_min = -lo;
    return scale;
}

/* The 12-byte packing of eight 6-bit scales and eight 6-bit mins (Q4_K, Q5_K):
 *   bytes 0..3:  scale j (j < 4) in bits 0-5, bits 4-5 of scale j+4 in bits 6-7
 *   bytes 4..7:  min j   (j < 4) in bits 0-5, bits 4-5 of min   j+4 in bits 6-7
 *   bytes 8..11: low nibble of scale j+4 | low nibble of min j+4 << 4 */
static inline void fdy_kq_scale_min_put(uint8_t *q, const uint8_t *ls, const uint8_t *lm) {
    for (int j = 0; j < 4; j++) {
        q[j] = ls[j];
        q[j + 4] = lm[j];
    }
    for (int j = 4; j < 8; j++) {
        q[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
        q[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
        q[j] |= (uint8_t)((lm[j] >> 4) << 6);
    }
}

/* ---- IQ4 (non-linear 4-bit grid) ---- */

/* index of the grid value nearest to x in the sorted 16-entry grid v (ties go up), with the
 * same comparisons as llama.cpp: clamp at the ends, bisection, then compare the two gaps */
static inline int fdy_iq4_best_index(const int8_t *v, float x) {
    if (x <= (float)v[0]) {
        return 0;
    }
    if (x >= (float)v[15]) {
        return 15;
    }
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (x < (float)v[mid]) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    return x - (float)v[hi - 1] < (float)v[hi] - x ? hi - 1 : hi;
}

/* Scale of one group of 32 values on the grid v, weights x^2: least-squares fit at the scale
 * that maps the largest-magnitude value onto the grid's end, then 2*ntry+1 trial inverse
 * scales (v[0] + t) / max, t = -ntry .. ntry, keeping the best fit.  Returns 0 for a group
 * whose magnitude is below FDY_KQ_GROUP_EPS. */
static float fdy_iq4_block_scale(const float *x, const int8_t *v, int ntry) {
    float amax = 0.0f, vmax = 0.0f;
    for (int j = 0; j < 32; j++) {
        const float a = fabsf(x[j]);
        if (a > amax) {
            amax = a;
            vmax = x[j];
        }
    }
    if (amax < FDY_KQ_GROUP_EPS) {
        return 0.0f;
    }
    float d = -vmax / (float)v[0];
    float id = 1.0f / d;
    float sumqx = 0.0f, sumq2 = 0.0f;
    for (int j = 0; j < 32; j++) {
        const float q = (float)v[fdy_iq4_best_index(v, id * x[j])];
        const float w = x[j] * x[j];
        sumqx += w * q * x[j];
        sumq2 += w * q * q;
    }
    d = sumq2 > 0.0f ? sumqx / sumq2 : 0.0f;
    float best = d * sumqx;
    for (int t = -ntry; t <= ntry; t++) {
        id = (float)(t + v[0]) / vmax;
        sumqx = 0.0f;
        sumq2 = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float q = (float)v[fdy_iq4_best_index(v, id * x[j])];
            const float w = x[j] * x[j];
            sumqx += w * q * x[j];
            sumq2 += w * q * q;
        }
        if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

#endif
