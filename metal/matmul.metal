/* matmul.metal - out (M, N) = act(h @ W.T + bias) (+ out when accumulating), W in slot 0,
 * h = x (M, K) or the fused RMSNorm of x (norm_w given): every threadgroup computes the
 * inverse RMS of its own rows, so no global synchronisation is needed.
 *
 *   fdy_gemv  M = 1 (or any M, one row of x per grid row y): one SIMD group per weight row,
 *             FDY_GEMV_ROWS groups per threadgroup; grid (ceil(N / FDY_GEMV_ROWS), M).
 *   fdy_gemm  prefill: 256 threads compute a FDY_TM x FDY_TN tile of out, stepping through K
 *             in chunks of FDY_TK staged in threadgroup memory (weights decoded there once
 *             per tile); edges masked, so M may be smaller than a tile.
 *             grid (ceil(N / FDY_TN), ceil(M / FDY_TM)).
 * flags: 1 bias, 2 accumulate, 4 norm; act: FDY_ACT_*.
 */
#ifndef FDY_GEMV_ROWS
#define FDY_GEMV_ROWS 4
#endif
#define FDY_TM 32
#define FDY_TN 64
#define FDY_TK 64 /* a multiple of every SUB_ELEMS (<= 32) */

FDY_FN void fdy_store_out(FDY_GLOBAL float *out, int64_t i, float v, FDY_GLOBAL const float *bias,
                          int n, int flags, int act) {
    if (flags & 1) {
        v += bias[n];
    }
    v = fdy_activate(v, act);
    if (flags & 2) {
        v += out[i];
    }
    out[i] = v;
}

#ifdef FDY_CUDA
/* CUDA fdy_gemv: FDY_GEMV_WARPS warps per block, FDY_GEMV_RPW rows per warp (so
 * grid (ceil(N / (FDY_GEMV_WARPS * FDY_GEMV_RPW)), M), 32 * FDY_GEMV_WARPS threads).  The row
 * is walked in chunks of FDY_GV_NB blocks: each warp copies its rows' chunk bytes into
 * shared memory with 16-byte loads (coalesced, many in flight), the block stages the matching
 * slice of x (normalised when fused) in shared memory padded by one float in 32 (lane s
 * reading element s * SUB + i hits bank (s + i) % 32: conflict-free), then lane l decodes
 * sub-blocks l, l + 32, ... of every row from shared memory and reuses each x value for
 * FDY_GEMV_RPW rows.  Rows per warp: (flags >> 8) & 7 when set (1, 2 or 4: small N wants
 * more warps), else FDY_GEMV_RPW; grid (ceil(N / (FDY_GEMV_WARPS * rpw)), M). */
#define FDY_GEMV_WARPS 2
#define FDY_GEMV_RPW 4
#define FDY_GV_NB0 ((FDY_W0_BLOCK_BYTES & 1) ? 16 : 8) /* NB0 * bytes is a multiple of 16 */
#define FDY_GV_MUL (1024 / (FDY_GV_NB0 * FDY_W0_BLOCK_BYTES))
#define FDY_GV_NB (FDY_GV_NB0 * (FDY_GV_MUL > 0 ? FDY_GV_MUL : 1))
#define FDY_GV_CHUNK (FDY_GV_NB * FDY_W0_BLOCK_BYTES)
#define FDY_GV_XE (FDY_GV_NB * FDY_W0_BLOCK_ELEMS)
#if defined(__CUDA_ARCH__) || defined(__NVCC__)
#define FDY_PRAGMA(x) _Pragma(#x)
#define FDY_UNROLL(n) FDY_PRAGMA(unroll n)
#else
#define FDY_UNROLL(n)
#endif
struct alignas(16) fdy_u128 {
    uint32_t a, b, c, d;
};
struct alignas(16) fdy_f4 {
    float x, y, z, w;
};

FDY_KERNEL fdy_gemv(FDY_BUFFER(FDY_GLOBAL const uint8_t *w, 0),
                    FDY_BUFFER(FDY_GLOBAL const float *x, 1),
                    FDY_BUFFER(FDY_GLOBAL const float *bias, 2),
                    FDY_BUFFER(FDY_GLOBAL float *out, 3),
                    FDY_BUFFER(FDY_GLOBAL const float *norm_w, 4),
                    FDY_SCALAR(int, N, 5), FDY_SCALAR(int, K, 6), FDY_SCALAR(int, flags, 7),
                    FDY_SCALAR(int, act, 8), FDY_SCALAR(float, eps, 9) FDY_KERNEL_INDICES) {
    FDY_SHARED float tmp[32];
    FDY_SHARED fdy_u128 stage16[FDY_GEMV_WARPS][FDY_GEMV_RPW][FDY_GV_CHUNK / 16];
    FDY_SHARED float xs[FDY_GV_XE + FDY_GV_XE / 32 + 1];
    const int m = FDY_GROUP_Y, tid = FDY_LOCAL_X, nt = FDY_GROUP_SIZE_X;
    const int lane = FDY_LANE, warp = FDY_SIMD_ID;
    FDY_GLOBAL const float *xr = x + (int64_t)m * K;
    float scale = 1.0f;
    if (flags & 4) {
        scale = fdy_group_inv_rms(xr, K, eps, tmp, tid, nt);
    }
    const int rq = (flags >> 8) & 7;
    const int rpw = rq > 0 && rq < FDY_GEMV_RPW ? rq : FDY_GEMV_RPW;
    const int n0 = (FDY_GROUP_X * FDY_GEMV_WARPS + warp) * rpw;
    const int nr = n0 >= N ? 0 : (N - n0 < rpw ? N - n0 : rpw);
    const int64_t rb = fdy_w_row_bytes_w0(K);
    const int nblk = K / FDY_W0_BLOCK_ELEMS;
    const int spb = FDY_W0_BLOCK_ELEMS / FDY_W0_SUB_ELEMS;
    const bool aligned = ((rb & 15) == 0) && ((((uint64_t)w) & 15) == 0);
    const bool xvec = ((((uint64_t)xr) & 15) == 0) && (FDY_GV_XE % 4 == 0) && (K % 4 == 0) &&
                      (!(flags & 4) || ((((uint64_t)norm_w) & 15) == 0));
    float acc[FDY_GEMV_RPW];
    for (int r = 0; r < FDY_GEMV_RPW; r++) {
        acc[r] = 0.0f;
    }
    float buf[FDY_W0_SUB_ELEMS];
    for (int b0 = 0; b0 < nblk; b0 += FDY_GV_NB) {
        const int nb = nblk - b0 < FDY_GV_NB ? nblk - b0 : FDY_GV_NB;
        const int cb = nb * FDY_W0_BLOCK_BYTES;
        const int k0 = b0 * FDY_W0_BLOCK_ELEMS, ke = nb * FDY_W0_BLOCK_ELEMS;
        FDY_BARRIER();
        for (int r = 0; r < nr; r++) {
            const uint8_t *src = w + (int64_t)(n0 + r) * rb + (int64_t)b0 * FDY_W0_BLOCK_BYTES;
            uint8_t *dst = (uint8_t *)stage16[warp][r];
            const int n16 = aligned ? cb >> 4 : 0;
FDY_UNROLL(4)
            for (int i = lane; i < n16; i += 32) {
                stage16[warp][r][i] = ((const fdy_u128 *)src)[i];
            }
            for (int i = (n16 << 4) + lane; i < cb; i += 32) {
                dst[i] = src[i];
            }
        }
        if (xvec) { /* 16-byte loads, all in flight */
FDY_UNROLL(8)
            for (int k = 4 * tid; k < ke; k += 4 * nt) {
                fdy_f4 v = *(const fdy_f4 *)(xr + k0 + k);
                if (flags & 4) {
                    const fdy_f4 g = *(const fdy_f4 *)(norm_w + k0 + k);
                    v.x = (v.x * scale) * g.x;
                    v.y = (v.y * scale) * g.y;
                    v.z = (v.z * scale) * g.z;
                    v.w = (v.w * scale) * g.w;
                }
                float *d = xs + k + (k >> 5);
                d[0] = v.x;
                d[1] = v.y;
                d[2] = v.z;
                d[3] = v.w;
            }
        } else {
            for (int k = tid; k < ke; k += nt) {
                float v = xr[k0 + k];
                if (flags & 4) {
                    v = (v * scale) * norm_w[k0 + k];
                }
                xs[k + (k >> 5)] = v;
            }
        }
        FDY_BARRIER();
        const int nsub = nb * spb;
        for (int s = lane; s < nsub; s += 32) {
            float xv[FDY_W0_SUB_ELEMS];
            for (int i = 0; i < FDY_W0_SUB_ELEMS; i++) {
                const int k = s * FDY_W0_SUB_ELEMS + i;
                xv[i] = xs[k + (k >> 5)];
            }
            for (int r = 0; r < FDY_GEMV_RPW; r++) {
                if (r < nr) {
                    fdy_w_decode_w0((const uint8_t *)stage16[warp][r], s, buf);
                    for (int i = 0; i < FDY_W0_SUB_ELEMS; i++) {
                        acc[r] += buf[i] * xv[i];
                    }
                }
            }
        }
    }
    for (int r = 0; r < FDY_GEMV_RPW; r++) {
        const float v = fdy_simd_sum(acc[r]);
        if (lane == 0 && r < nr) {
            fdy_store_out(out, (int64_t)m * N + n0 + r, v, bias, n0 + r, flags, act);
        }
    }
}

#ifdef FDY_W0_DOTF_PARTS
/* fdy_gemv_dotf<R>: the GEMV through the policy's dot hook (the dot of one part of a block
 * with x), for policies that have one and no fused norm.  A block of FDY_GD_WARPS warps
 * computes R rows, the warps splitting K (warp w takes blocks w * 32 / PARTS + ... and the
 * partial sums meet in shared memory at the end); lane l takes part l % PARTS of its blocks,
 * reading the weights with word loads straight from device memory (no staging, no barrier,
 * no shared memory) and x through the L1 cache.  Every load of an unrolled step is
 * unconditional (indices clamped, results masked), and a step first loads the raw words of
 * its FDY_GD_U x R block parts (FDY_W0_DOTF_LOAD) and only then computes (FDY_W0_DOTF_CALC),
 * so all those loads are in flight together.  grid (ceil(N / R), M). */
#ifndef FDY_GD_WARPS
#define FDY_GD_WARPS 4 /* warps per block, splitting K (the host launches 32 x this) */
#endif
#ifndef FDY_GD_U /* blocks per lane per step: the policy's choice (FDY_<NAME>_DOTF_U), else 4 */
#ifdef FDY_W0_DOTF_U
#define FDY_GD_U FDY_W0_DOTF_U
#else
#define FDY_GD_U 4
#endif
#endif
#define FDY_GEMV_HOOK_KERNEL(NAME, R, U, X1, X4, XSETUP, CALC)                                 \
    FDY_KERNEL NAME(FDY_BUFFER(FDY_GLOBAL const uint8_t *w, 0),                              \
                    FDY_BUFFER(X1, 1),                                                       \
                    FDY_BUFFER(FDY_GLOBAL const float *bias, 2),                             \
                    FDY_BUFFER(FDY_GLOBAL float *out, 3),                                    \
                    FDY_BUFFER(X4, 4), FDY_SCALAR(int, N, 5),                                \
                    FDY_SCALAR(int, K, 6), FDY_SCALAR(int, flags, 7), FDY_SCALAR(int, act, 8), \
                    FDY_SCALAR(float, eps, 9) FDY_KERNEL_INDICES) {                          \
        FDY_SHARED float partial[FDY_GD_WARPS][R];                                           \
        const int m = FDY_GROUP_Y, lane = FDY_LANE, warp = FDY_SIMD_ID;                      \
        const int n0 = FDY_GROUP_X * (R);                                                    \
        if (n0 >= N) {                                                                       \
            return;                                                                          \
        }                                                                                    \
        const int nr = N - n0 < (R) ? N - n0 : (R);                                          \
        const int64_t rb = fdy_w_row_bytes_w0(K);                                            \
        const int nblk = K / FDY_W0_BLOCK_ELEMS;                                             \
        const int bps = 32 / FDY_W0_DOTF_PARTS, part = lane % FDY_W0_DOTF_PARTS;             \
        const int wstride = FDY_GD_WARPS * bps; /* blocks the group covers per unrolled u */ \
        XSETUP                                                                               \
        FDY_GLOBAL const uint8_t *rowp[R];                                                   \
        float acc[R];                                                                        \
        FDY_UNROLL(R)                                                                        \
        for (int r = 0; r < (R); r++) {                                                      \
            rowp[r] = w + (int64_t)(n0 + (r < nr ? r : nr - 1)) * rb;                        \
            acc[r] = 0.0f;                                                                   \
        }                                                                                    \
        for (int kb0 = warp * bps + lane / FDY_W0_DOTF_PARTS; kb0 < nblk;                    \
             kb0 += (U) * wstride) {                                                    \
            uint32_t raw[(U)][R][FDY_W0_DOTF_WORDS];                                    \
            FDY_UNROLL(U)                                                             \
            for (int u = 0; u < (U); u++) {                                             \
                const int kb = kb0 + u * wstride < nblk ? kb0 + u * wstride : kb0;           \
                FDY_UNROLL(R)                                                                \
                for (int r = 0; r < (R); r++) {                                              \
                    FDY_W0_DOTF_LOAD(rowp[r] + (int64_t)kb * FDY_W0_BLOCK_BYTES, part, raw[u][r]); \
                }                                                                            \
            }                                                                                \
            FDY_UNROLL(U)                                                             \
            for (int u = 0; u < (U); u++) {                                             \
                const bool ok = kb0 + u * wstride < nblk;                                    \
                const int kb = ok ? kb0 + u * wstride : kb0;                                 \
                FDY_UNROLL(R)                                                                \
                for (int r = 0; r < (R); r++) {                                              \
                    const float v = CALC;                                                    \
                    acc[r] += ok ? v : 0.0f;                                                 \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        FDY_UNROLL(R)                                                                        \
        for (int r = 0; r < (R); r++) {                                                      \
            const float t = fdy_simd_sum(acc[r]);                                            \
            if (lane == 0) {                                                                 \
                partial[warp][r] = t;                                                        \
            }                                                                                \
        }                                                                                    \
        FDY_BARRIER();                                                                       \
        if (warp == 0 && lane < nr) {                                                        \
            float t = 0.0f;                                                                  \
            for (int q = 0; q < FDY_GD_WARPS; q++) {                                         \
                t += partial[q][lane];                                                       \
            }                                                                                \
            fdy_store_out(out, (int64_t)m * N + n0 + lane, t, bias, n0 + lane, flags, act);  \
        }                                                                                    \
    }
#define FDY_GEMV_DOTF_KERNEL(NAME, R)                                                         \
    FDY_GEMV_HOOK_KERNEL(NAME, R, FDY_GD_U, FDY_GLOBAL const float *x,                       \
                         FDY_GLOBAL const float *norm_w,                                      \
                         FDY_GLOBAL const float *xr = x + (int64_t)m * K;,                    \
                         FDY_W0_DOTF_CALC(raw[u][r], part, xr + (int64_t)kb * FDY_W0_BLOCK_ELEMS))
FDY_GEMV_DOTF_KERNEL(fdy_gemv_dotf1, 1)
FDY_GEMV_DOTF_KERNEL(fdy_gemv_dotf2, 2)
FDY_GEMV_DOTF_KERNEL(fdy_gemv_dotf4, 4)

#ifdef FDY_W0_DOTI_CALC
/* fdy_gemv_doti<R>: the q8 variant's GEMV through the policy's integer hook, the kernel above
 * with x replaced by its device quantization (fdy_quantize_act): the codes xq (M, K) in slot 1
 * and the group scales xd (M, K / FDY_W0_ACT_GROUP) in slot 4.  Same grid and block. */
#ifndef FDY_GI_U
#ifdef FDY_W0_DOTI_U
#define FDY_GI_U FDY_W0_DOTI_U
#else
#define FDY_GI_U FDY_GD_U
#endif
#endif
#define FDY_GEMV_DOTI_KERNEL(NAME, R)                                                         \
    FDY_GEMV_HOOK_KERNEL(NAME, R, FDY_GI_U, FDY_GLOBAL const uint8_t *xq,                    \
                         FDY_GLOBAL const float *xd,                                          \
                         FDY_GLOBAL const uint8_t *xqr = xq + (int64_t)m * K;                 \
                         FDY_GLOBAL const float *xdr = xd + (int64_t)m * (K / FDY_W0_ACT_GROUP);, \
                         FDY_W0_DOTI_CALC(raw[u][r], part, xqr + (int64_t)kb * FDY_W0_BLOCK_ELEMS, \
                                          xdr + (int64_t)kb * FDY_W0_BLOCK_ELEMS / FDY_W0_ACT_GROUP))
FDY_GEMV_DOTI_KERNEL(fdy_gemv_doti1, 1)
FDY_GEMV_DOTI_KERNEL(fdy_gemv_doti2, 2)
FDY_GEMV_DOTI_KERNEL(fdy_gemv_doti4, 4)
#endif
#endif
#else
FDY_KERNEL fdy_gemv(FDY_BUFFER(FDY_GLOBAL const uint8_t *w, 0),
                    FDY_BUFFER(FDY_GLOBAL const float *x, 1),
                    FDY_BUFFER(FDY_GLOBAL const float *bias, 2),
                    FDY_BUFFER(FDY_GLOBAL float *out, 3),
                    FDY_BUFFER(FDY_GLOBAL const float *norm_w, 4),
                    FDY_SCALAR(int, N, 5), FDY_SCALAR(int, K, 6), FDY_SCALAR(int, flags, 7),
                    FDY_SCALAR(int, act, 8), FDY_SCALAR(float, eps, 9) FDY_KERNEL_INDICES) {
    FDY_SHARED float tmp[32];
    const int m = FDY_GROUP_Y;
    FDY_GLOBAL const float *xr = x + (int64_t)m * K;
    float scale = 1.0f;
    if (flags & 4) {
        scale = fdy_group_inv_rms(xr, K, eps, tmp, FDY_LOCAL_X, FDY_GROUP_SIZE_X);
    }
    const int n = FDY_GROUP_X * FDY_GEMV_ROWS + FDY_SIMD_ID;
    if (n >= N) {
        return;
    }
    FDY_GLOBAL const uint8_t *row = w + (int64_t)n * fdy_w_row_bytes_w0(K);
    const float v = fdy_w_dot_w0(row, xr, (flags & 4) ? norm_w : 0, scale, K, FDY_LANE);
    if (FDY_LANE == 0) {
        fdy_store_out(out, (int64_t)m * N + n, v, bias, n, flags, act);
    }
}

#endif

FDY_KERNEL fdy_gemm(FDY_BUFFER(FDY_GLOBAL const uint8_t *w, 0),
                    FDY_BUFFER(FDY_GLOBAL const float *x, 1),
                    FDY_BUFFER(FDY_GLOBAL const float *bias, 2),
                    FDY_BUFFER(FDY_GLOBAL float *out, 3),
                    FDY_BUFFER(FDY_GLOBAL const float *norm_w, 4),
                    FDY_SCALAR(int, N, 5), FDY_SCALAR(int, K, 6), FDY_SCALAR(int, flags, 7),
                    FDY_SCALAR(int, act, 8), FDY_SCALAR(float, eps, 9),
                    FDY_SCALAR(int, M, 10) FDY_KERNEL_INDICES) {
    FDY_SHARED float ws[FDY_TN][FDY_TK + 1];
    FDY_SHARED float xs[FDY_TM][FDY_TK + 1];
    FDY_SHARED float scales[FDY_TM];
    const int tid = FDY_LOCAL_X, lane = FDY_LANE, simd = FDY_SIMD_ID;
    const int n0 = FDY_GROUP_X * FDY_TN, m0 = FDY_GROUP_Y * FDY_TM;
    const int64_t row_bytes = fdy_w_row_bytes_w0(K);
    const int sub = FDY_W0_SUB_ELEMS;

    /* inverse RMS of this tile's rows: one SIMD group per row */
    for (int r = simd; r < FDY_TM; r += 8) {
        float sc = 1.0f;
        if ((flags & 4) && m0 + r < M) {
            FDY_GLOBAL const float *xr = x + (int64_t)(m0 + r) * K;
            fdy_real ss = 0;
            for (int k = lane; k < K; k += 32) {
                ss += (fdy_real)xr[k] * (fdy_real)xr[k];
            }
            const float tot = fdy_simd_sum((float)ss);
            sc = (float)((fdy_real)1 / sqrt((fdy_real)tot / (fdy_real)K + (fdy_real)eps));
        }
        if (lane == 0) {
            scales[r] = sc;
        }
    }

    const int tn = tid & 15, tm = tid >> 4; /* outputs (m0 + 2 tm + i, n0 + tn + 16 j) */
    float acc[2][4];
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 4; j++) {
            acc[i][j] = 0.0f;
        }
    }
    float buf[FDY_W0_SUB_ELEMS];
    for (int k0 = 0; k0 < K; k0 += FDY_TK) {
        const int kc = K - k0 < FDY_TK ? K - k0 : FDY_TK;
        FDY_BARRIER();
        /* weights: FDY_TN rows x kc / sub sub-blocks, decoded once */
        const int spr = kc / sub;
        for (int u = tid; u < FDY_TN * spr; u += 256) {
            const int r = u / spr, sc = u % spr;
            if (n0 + r < N) {
                fdy_w_decode_w0(w + (int64_t)(n0 + r) * row_bytes, k0 / sub + sc, buf);
                for (int i = 0; i < FDY_W0_SUB_ELEMS; i++) {
                    ws[r][sc * sub + i] = buf[i];
                }
            } else {
                for (int i = 0; i < FDY_W0_SUB_ELEMS; i++) {
                    ws[r][sc * sub + i] = 0.0f;
                }
            }
        }
        /* activations (normalised on the fly) */
        for (int u = tid; u < FDY_TM * kc; u += 256) {
            const int r = u / kc, k = u % kc;
            float v = 0.0f;
            if (m0 + r < M) {
                v = x[(int64_t)(m0 + r) * K + k0 + k];
                if (flags & 4) {
                    v = (v * scales[r]) * norm_w[k0 + k];
                }
            }
            xs[r][k] = v;
        }
        FDY_BARRIER();
        for (int k = 0; k < kc; k++) {
            const float x0 = xs[2 * tm][k], x1 = xs[2 * tm + 1][k];
            for (int j = 0; j < 4; j++) {
                const float wv = ws[tn + 16 * j][k];
                acc[0][j] += x0 * wv;
                acc[1][j] += x1 * wv;
            }
        }
    }
    for (int i = 0; i < 2; i++) {
        const int m = m0 + 2 * tm + i;
        for (int j = 0; j < 4; j++) {
            const int n = n0 + tn + 16 * j;
            if (m < M && n < N) {
                fdy_store_out(out, (int64_t)m * N + n, acc[i][j], bias, n, flags, act);
            }
        }
    }
}

#ifdef FDY_W0_ACT_GROUP
/* fdy_quantize_act: the activations of the q8 variant, quantized on the device in the slot's
 * dot_type (the arithmetic of the CPU quantizer: same codes, same scales).  x (M, K) gives the
 * codes xq (M, K), the group scales xd (M, K / G) (the values the dot kernels multiply by) and,
 * when xf is given (flags & 1), the dequantized activations xf = d * q (M, K) for kernels
 * without an integer hook.  One SIMD group per group of G = FDY_W0_ACT_GROUP values, lane l
 * holding values l G / 32 ... (l + 1) G / 32 - 1; the largest magnitude (the first one on ties,
 * its sign kept) by a SIMD-group reduction.  grid (ceil(K / G / 4), M), 128 threads. */
#define FDY_AQ_PER (FDY_W0_ACT_GROUP / 32)
FDY_KERNEL fdy_quantize_act(FDY_BUFFER(FDY_GLOBAL const float *x, 0),
                            FDY_BUFFER(FDY_GLOBAL uint8_t *xq, 1),
                            FDY_BUFFER(FDY_GLOBAL float *xd, 2),
                            FDY_BUFFER(FDY_GLOBAL float *xf, 3),
                            FDY_SCALAR(int, K, 4), FDY_SCALAR(int, flags, 5) FDY_KERNEL_INDICES) {
    const int m = FDY_GROUP_Y, lane = FDY_LANE;
    const int g = FDY_GROUP_X * (FDY_GROUP_SIZE_X / 32) + FDY_SIMD_ID;
    const int ng = K / FDY_W0_ACT_GROUP;
    if (g >= ng) {
        return; /* a whole SIMD group: g is the same on its lanes */
    }
    const int64_t base = (int64_t)m * K + (int64_t)g * FDY_W0_ACT_GROUP + lane * FDY_AQ_PER;
    float v[FDY_AQ_PER];
    float amax = 0.0f, vmax = 0.0f;
    float at = (float)(lane * FDY_AQ_PER); /* index of vmax in the group */
    for (int i = 0; i < FDY_AQ_PER; i++) {
        v[i] = x[base + i];
        const float a = v[i] < 0.0f ? -v[i] : v[i];
        if (a > amax) {
            amax = a;
            vmax = v[i];
            at = (float)(lane * FDY_AQ_PER + i);
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float oa = fdy_simd_shuffle_xor(amax, o), ov = fdy_simd_shuffle_xor(vmax, o);
        const float oat = fdy_simd_shuffle_xor(at, o);
        if (oa > amax || (oa == amax && oat < at)) {
            amax = oa;
            vmax = ov;
            at = oat;
        }
    }
    float id;
    const float d = FDY_W0_ACT_SCALE(amax, vmax, &id);
    for (int i = 0; i < FDY_AQ_PER; i++) {
        const int q = FDY_W0_ACT_CODE(v[i], id);
        xq[base + i] = (uint8_t)(q & 0xFF);
        if (flags & 1) {
            xf[base + i] = d * (float)q;
        }
    }
    if (lane == 0) {
        xd[(int64_t)m * ng + g] = d;
    }
}
#endif
