/* qkv.metal - fused RMSNorm + 2 or 3 projections of one normalised x, each weight in its own
 * slot (policies may differ: Q in q4_k, K in q6_k ...).  One SIMD group per output row; the
 * rows of all parts are laid end to end over the grid, so one launch covers Q, K and V.
 * Every threadgroup computes its row's inverse RMS itself.
 * grid (ceil((N0 + N1 + N2) / FDY_GEMV_ROWS), M); flags bit i: part i has a bias.
 */
#ifndef FDY_GEMV_ROWS
#define FDY_GEMV_ROWS 4
#endif

FDY_KERNEL fdy_qkv(FDY_BUFFER(FDY_GLOBAL const uint8_t *w0, 0),
                   FDY_BUFFER(FDY_GLOBAL const uint8_t *w1, 1),
                   FDY_BUFFER(FDY_GLOBAL const uint8_t *w2, 2),
                   FDY_BUFFER(FDY_GLOBAL const float *x, 3),
                   FDY_BUFFER(FDY_GLOBAL const float *norm_w, 4),
                   FDY_BUFFER(FDY_GLOBAL const float *b0, 5),
                   FDY_BUFFER(FDY_GLOBAL const float *b1, 6),
                   FDY_BUFFER(FDY_GLOBAL const float *b2, 7),
                   FDY_BUFFER(FDY_GLOBAL float *o0, 8),
                   FDY_BUFFER(FDY_GLOBAL float *o1, 9),
                   FDY_BUFFER(FDY_GLOBAL float *o2, 10),
                   FDY_SCALAR(int, N0, 11), FDY_SCALAR(int, N1, 12), FDY_SCALAR(int, N2, 13),
                   FDY_SCALAR(int, K, 14), FDY_SCALAR(int, flags, 15),
                   FDY_SCALAR(float, eps, 16) FDY_KERNEL_INDICES) {
    FDY_SHARED float tmp[32];
    const int m = FDY_GROUP_Y;
    FDY_GLOBAL const float *xr = x + (int64_t)m * K;
    const float scale = fdy_group_inv_rms(xr, K, eps, tmp, FDY_LOCAL_X, FDY_GROUP_SIZE_X);
    int n = FDY_GROUP_X * FDY_GEMV_ROWS + FDY_SIMD_ID;
    float v;
    if (n < N0) {
        v = fdy_w_dot_w0(w0 + (int64_t)n * fdy_w_row_bytes_w0(K), xr, norm_w, scale, K,
                         FDY_LANE);
        if (FDY_LANE == 0) {
            o0[(int64_t)m * N0 + n] = (flags & 1) ? v + b0[n] : v;
        }
        return;
    }
    n -= N0;
    if (n < N1) {
        v = fdy_w_dot_w1(w1 + (int64_t)n * fdy_w_row_bytes_w1(K), xr, norm_w, scale, K,
                         FDY_LANE);
        if (FDY_LANE == 0) {
            o1[(int64_t)m * N1 + n] = (flags & 2) ? v + b1[n] : v;
        }
        return;
    }
#ifdef FDY_W2_DECODE
    n -= N1;
    if (n < N2) {
        v = fdy_w_dot_w2(w2 + (int64_t)n * fdy_w_row_bytes_w2(K), xr, norm_w, scale, K,
                         FDY_LANE);
        if (FDY_LANE == 0) {
            o2[(int64_t)m * N2 + n] = (flags & 4) ? v + b2[n] : v;
        }
    }
#endif
}
