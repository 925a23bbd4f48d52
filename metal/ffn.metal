/* ffn.metal - the first half of the fused FFN for decode: h (M, F) = silu(gate(n)) * up(n),
 * n = rmsnorm(x), gate in slot 0 and up in slot 1.  One SIMD group computes row f of both
 * projections and applies SwiGLU before writing, so gate and up never reach memory.  The
 * down projection with its residual add is fdy_gemv with accumulate.
 * grid (ceil(F / FDY_GEMV_ROWS), M).
 */
#ifndef FDY_GEMV_ROWS
#define FDY_GEMV_ROWS 4
#endif

FDY_KERNEL fdy_gateup(FDY_BUFFER(FDY_GLOBAL const uint8_t *wg, 0),
                      FDY_BUFFER(FDY_GLOBAL const uint8_t *wu, 1),
                      FDY_BUFFER(FDY_GLOBAL const float *x, 2),
                      FDY_BUFFER(FDY_GLOBAL const float *norm_w, 3),
                      FDY_BUFFER(FDY_GLOBAL float *h, 4),
                      FDY_SCALAR(int, F, 5), FDY_SCALAR(int, K, 6),
                      FDY_SCALAR(float, eps, 7) FDY_KERNEL_INDICES) {
    FDY_SHARED float tmp[32];
    const int m = FDY_GROUP_Y;
    FDY_GLOBAL const float *xr = x + (int64_t)m * K;
    const float scale = fdy_group_inv_rms(xr, K, eps, tmp, FDY_LOCAL_X, FDY_GROUP_SIZE_X);
    const int f = FDY_GROUP_X * FDY_GEMV_ROWS + FDY_SIMD_ID;
    if (f >= F) {
        return;
    }
    const float g = fdy_w_dot_w0(wg + (int64_t)f * fdy_w_row_bytes_w0(K), xr, norm_w, scale, K,
                                 FDY_LANE);
    const float u = fdy_w_dot_w1(wu + (int64_t)f * fdy_w_row_bytes_w1(K), xr, norm_w, scale, K,
                                 FDY_LANE);
    if (FDY_LANE == 0) {
        h[(int64_t)m * F + f] = (g / (1.0f + exp(-g))) * u;
    }
}
