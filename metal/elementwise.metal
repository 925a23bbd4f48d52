/* elementwise.metal - the stages without weights that touch each row once: RMSNorm and
 * softmax (one threadgroup per row, grid (M)), SwiGLU and add (grid (ceil(n / group))). */

FDY_KERNEL fdy_rmsnorm(FDY_BUFFER(FDY_GLOBAL const float *x, 0),
                       FDY_BUFFER(FDY_GLOBAL const float *weight, 1),
                       FDY_BUFFER(FDY_GLOBAL float *out, 2),
                       FDY_SCALAR(int, K, 3), FDY_SCALAR(float, eps, 4) FDY_KERNEL_INDICES) {
    FDY_SHARED float tmp[32];
    FDY_GLOBAL const float *xr = x + (int64_t)FDY_GROUP_X * K;
    FDY_GLOBAL float *o = out + (int64_t)FDY_GROUP_X * K;
    const float scale = fdy_group_inv_rms(xr, K, eps, tmp, FDY_LOCAL_X, FDY_GROUP_SIZE_X);
    for (int k = FDY_LOCAL_X; k < K; k += FDY_GROUP_SIZE_X) {
        o[k] = (xr[k] * scale) * weight[k];
    }
}

FDY_KERNEL fdy_softmax(FDY_BUFFER(FDY_GLOBAL const float *x, 0),
                       FDY_BUFFER(FDY_GLOBAL float *out, 1),
                       FDY_SCALAR(int, N, 2) FDY_KERNEL_INDICES) {
    FDY_SHARED float tmp[32];
    const int tid = FDY_LOCAL_X, nt = FDY_GROUP_SIZE_X;
    const int lane = FDY_LANE, simd = FDY_SIMD_ID, ns = (nt + 31) >> 5;
    FDY_GLOBAL const float *r = x + (int64_t)FDY_GROUP_X * N;
    FDY_GLOBAL float *o = out + (int64_t)FDY_GROUP_X * N;
    float mx = FDY_NEG_INF;
    for (int i = tid; i < N; i += nt) {
        mx = fmax(mx, r[i]);
    }
    mx = fdy_group_max(mx, tmp, lane, simd, ns);
    fdy_real sum = 0;
    for (int i = tid; i < N; i += nt) {
        const float e = exp(r[i] - mx);
        o[i] = e;
        sum += e;
    }
    const float tot = fdy_group_sum((float)sum, tmp, lane, simd, ns);
    const float inv = (float)((fdy_real)1 / (fdy_real)tot);
    for (int i = tid; i < N; i += nt) {
        o[i] *= inv;
    }
}

FDY_KERNEL fdy_swiglu(FDY_BUFFER(FDY_GLOBAL const float *gate, 0),
                      FDY_BUFFER(FDY_GLOBAL const float *up, 1),
                      FDY_BUFFER(FDY_GLOBAL float *out, 2),
                      FDY_SCALAR(int, n, 3) FDY_KERNEL_INDICES) {
    const int i = FDY_GROUP_X * FDY_GROUP_SIZE_X + FDY_LOCAL_X;
    if (i < n) {
        const float g = gate[i];
        out[i] = (g / (1.0f + exp(-g))) * up[i];
    }
}

FDY_KERNEL fdy_add(FDY_BUFFER(FDY_GLOBAL const float *a, 0),
                   FDY_BUFFER(FDY_GLOBAL const float *b, 1),
                   FDY_BUFFER(FDY_GLOBAL float *out, 2),
                   FDY_SCALAR(int, n, 3) FDY_KERNEL_INDICES) {
    const int i = FDY_GROUP_X * FDY_GROUP_SIZE_X + FDY_LOCAL_X;
    if (i < n) {
        out[i] = a[i] + b[i];
    }
}
