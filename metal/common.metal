/* common.metal - helpers every kernel template may use: activations and threadgroup
 * reductions.  Pasted once, after the policy device parts and before the weight slots. */

#define FDY_ACT_NONE 0
#define FDY_ACT_SILU 1
#define FDY_ACT_GELU 2
#define FDY_ACT_RELU 3

/* the activations of the CPU core (gelu: tanh approximation, as ggml) */
FDY_FN float fdy_activate(float v, int act) {
    if (act == FDY_ACT_SILU) {
        return v / (1.0f + exp(-v));
    }
    if (act == FDY_ACT_GELU) {
        const float c = 0.7978845608028654f;
        return 0.5f * v * (1.0f + tanh(c * (v + 0.044715f * v * v * v)));
    }
    if (act == FDY_ACT_RELU) {
        return v > 0.0f ? v : 0.0f;
    }
    return v;
}

#define FDY_NEG_INF fdy_as_float(0xff800000u)

/* sum / max over the whole threadgroup; tmp holds one float per SIMD group (<= 32).  Every
 * thread of the group must call it; every thread gets the result. */
FDY_FN float fdy_group_sum(float v, FDY_SHARED_PTR float *tmp, int lane, int simd, int n_simd) {
    v = fdy_simd_sum(v);
    FDY_BARRIER();
    if (lane == 0) {
        tmp[simd] = v;
    }
    FDY_BARRIER();
    float t = lane < n_simd ? tmp[lane] : 0.0f;
    return fdy_simd_sum(t);
}

FDY_FN float fdy_group_max(float v, FDY_SHARED_PTR float *tmp, int lane, int simd, int n_simd) {
    v = fdy_simd_max(v);
    FDY_BARRIER();
    if (lane == 0) {
        tmp[simd] = v;
    }
    FDY_BARRIER();
    float t = lane < n_simd ? tmp[lane] : FDY_NEG_INF;
    return fdy_simd_max(t);
}

/* 1 / sqrt(mean(x^2) + eps) of one row of K, computed by the whole threadgroup of nthreads
 * (per-thread partial sums in fdy_real, the widest float type of the target) */
FDY_FN float fdy_group_inv_rms(FDY_GLOBAL const float *x, int K, float eps,
                               FDY_SHARED_PTR float *tmp, int tid, int nthreads) {
    fdy_real ss = 0;
    for (int k = tid; k < K; k += nthreads) {
        ss += (fdy_real)x[k] * (fdy_real)x[k];
    }
    const float tot = fdy_group_sum((float)ss, tmp, tid & 31, tid >> 5, (nthreads + 31) >> 5);
    return (float)((fdy_real)1 / sqrt((fdy_real)tot / (fdy_real)K + (fdy_real)eps));
}
