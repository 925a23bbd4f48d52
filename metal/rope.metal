/* rope.metal - rotary embedding of x (M, H, D) at positions (M,), normal (pairs 2i, 2i+1) or
 * NeoX (pairs i, i + rot/2) layout, the first rot dims rotated and the rest copied; angles in
 * fdy_real (double on CUDA).  The KV-cache write is fused: with flags & 4, row m is written
 * to row positions[m] of out (the K cache), and v (M, H, D) is copied to the same row of
 * v_out (the V cache).  grid (M * H), any group size.
 * flags: 1 neox, 2 freq_factors given, 4 write at positions (cache), 8 copy v.
 */

FDY_KERNEL fdy_rope(FDY_BUFFER(FDY_GLOBAL const float *x, 0),
                    FDY_BUFFER(FDY_GLOBAL const int32_t *positions, 1),
                    FDY_BUFFER(FDY_GLOBAL const float *freq, 2),
                    FDY_BUFFER(FDY_GLOBAL float *out, 3),
                    FDY_BUFFER(FDY_GLOBAL const float *v, 4),
                    FDY_BUFFER(FDY_GLOBAL float *v_out, 5),
                    FDY_SCALAR(int, H, 6), FDY_SCALAR(int, D, 7), FDY_SCALAR(int, rot, 8),
                    FDY_SCALAR(float, theta, 9), FDY_SCALAR(int, flags, 10) FDY_KERNEL_INDICES) {
    const int m = FDY_GROUP_X / H, h = FDY_GROUP_X % H;
    const int pos = positions[m];
    const int dst = (flags & 4) ? pos : m;
    FDY_GLOBAL const float *xr = x + ((int64_t)m * H + h) * D;
    FDY_GLOBAL float *o = out + ((int64_t)dst * H + h) * D;
    const int half = rot / 2;
    for (int i = FDY_LOCAL_X; i < half; i += FDY_GROUP_SIZE_X) {
        fdy_real a = (fdy_real)pos * pow((fdy_real)theta, (fdy_real)(-2 * i) / (fdy_real)rot);
        if (flags & 2) {
            a /= (fdy_real)freq[i];
        }
        const fdy_real c = cos(a), s = sin(a);
        const int i0 = (flags & 1) ? i : 2 * i;
        const int i1 = (flags & 1) ? i + half : 2 * i + 1;
        const fdy_real x0 = xr[i0], x1 = xr[i1];
        o[i0] = (float)(x0 * c - x1 * s);
        o[i1] = (float)(x0 * s + x1 * c);
    }
    for (int d = rot + FDY_LOCAL_X; d < D; d += FDY_GROUP_SIZE_X) {
        o[d] = xr[d];
    }
    if (flags & 8) {
        FDY_GLOBAL const float *vr = v + ((int64_t)m * H + h) * D;
        FDY_GLOBAL float *vo = v_out + ((int64_t)dst * H + h) * D;
        for (int d = FDY_LOCAL_X; d < D; d += FDY_GROUP_SIZE_X) {
            vo[d] = vr[d];
        }
    }
}
