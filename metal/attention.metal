/* attention.metal - causal grouped-query attention over a KV cache, decode (M = 1) and
 * prefill (M > 1) alike: q (M, H, D) at positions start_pos.., caches (C, Hkv, D), out
 * (M, H, D); query head h reads kv head h / (H / Hkv); row m sees cache rows
 * 0 .. start_pos + m (any length).
 *
 * One threadgroup of FDY_ATT_SIMDS SIMD groups per (head, row); SIMD group w takes the cache
 * rows t = w, w + FDY_ATT_SIMDS, ... with an online softmax (running max, running sum,
 * rescaled accumulator; lane l holds dims l, l + 32, ...), then the groups' partial results
 * are merged through threadgroup memory.  D <= 32 * FDY_ATT_DPL.
 * grid (H, M), FDY_ATT_SIMDS * 32 threads.  With `positions` given (a device buffer, so a
 * captured graph replays at any position) row m sees rows 0 .. positions[m] and start_pos is
 * ignored.
 */
#define FDY_ATT_SIMDS 16
#define FDY_ATT_DPL 8
#define FDY_ATT_ILP 4

FDY_KERNEL fdy_attention(FDY_BUFFER(FDY_GLOBAL const float *q, 0),
                         FDY_BUFFER(FDY_GLOBAL const float *kc, 1),
                         FDY_BUFFER(FDY_GLOBAL const float *vc, 2),
                         FDY_BUFFER(FDY_GLOBAL float *out, 3),
                         FDY_SCALAR(int, H, 4), FDY_SCALAR(int, D, 5), FDY_SCALAR(int, Hkv, 6),
                         FDY_SCALAR(int, start_pos, 7),
                         FDY_SCALAR(float, scale, 8),
                         FDY_BUFFER(FDY_GLOBAL const int32_t *positions, 9) FDY_KERNEL_INDICES) {
    FDY_SHARED float s_max[FDY_ATT_SIMDS];
    FDY_SHARED float s_sum[FDY_ATT_SIMDS];
    FDY_SHARED float s_acc[FDY_ATT_SIMDS][32 * FDY_ATT_DPL];
    const int h = FDY_GROUP_X, m = FDY_GROUP_Y;
    const int lane = FDY_LANE, simd = FDY_SIMD_ID;
    const int hk = h / (H / Hkv);
    const int n = (positions ? positions[m] : start_pos + m) + 1;
    FDY_GLOBAL const float *qr = q + ((int64_t)m * H + h) * D;
    float qv[FDY_ATT_DPL], acc[FDY_ATT_DPL];
    for (int j = 0; j < FDY_ATT_DPL; j++) {
        const int d = lane + 32 * j;
        qv[j] = d < D ? qr[d] : 0.0f;
        acc[j] = 0.0f;
    }
    float mx = FDY_NEG_INF, sum = 0.0f;
    /* FDY_ATT_ILP positions per step: independent loads and reductions in flight */
    for (int t0 = simd; t0 < n; t0 += FDY_ATT_SIMDS * FDY_ATT_ILP) {
        float sc[FDY_ATT_ILP];
        float vv[FDY_ATT_ILP][FDY_ATT_DPL]; /* V rows loaded with the K rows: one latency */
        for (int u = 0; u < FDY_ATT_ILP; u++) {
            const int t = t0 + u * FDY_ATT_SIMDS;
            float dot = 0.0f;
            for (int j = 0; j < FDY_ATT_DPL; j++) {
                vv[u][j] = 0.0f;
            }
            if (t < n) {
                FDY_GLOBAL const float *kr = kc + ((int64_t)t * Hkv + hk) * D;
                FDY_GLOBAL const float *vr = vc + ((int64_t)t * Hkv + hk) * D;
                for (int j = 0; j < FDY_ATT_DPL; j++) {
                    const int d = lane + 32 * j;
                    if (d < D) {
                        dot += qv[j] * kr[d];
                        vv[u][j] = vr[d];
                    }
                }
            }
            sc[u] = dot;
        }
        for (int u = 0; u < FDY_ATT_ILP; u++) {
            sc[u] = fdy_simd_sum(sc[u]) * scale;
        }
        for (int u = 0; u < FDY_ATT_ILP; u++) {
            const int t = t0 + u * FDY_ATT_SIMDS;
            if (t < n) {
                const float s = sc[u];
                const float nm = fmax(mx, s);
                const float corr = exp(mx - nm), p = exp(s - nm);
                sum = sum * corr + p;
                for (int j = 0; j < FDY_ATT_DPL; j++) {
                    const int d = lane + 32 * j;
                    acc[j] = acc[j] * corr + (d < D ? p * vv[u][j] : 0.0f);
                }
                mx = nm;
            }
        }
    }
    if (lane == 0) {
        s_max[simd] = mx;
        s_sum[simd] = sum;
    }
    for (int j = 0; j < FDY_ATT_DPL; j++) {
        s_acc[simd][lane + 32 * j] = acc[j];
    }
    FDY_BARRIER();
    float gm = FDY_NEG_INF;
    for (int w = 0; w < FDY_ATT_SIMDS; w++) {
        gm = fmax(gm, s_max[w]);
    }
    float tot = 0.0f, f[FDY_ATT_SIMDS];
    for (int w = 0; w < FDY_ATT_SIMDS; w++) {
        f[w] = s_sum[w] > 0.0f ? exp(s_max[w] - gm) : 0.0f;
        tot += s_sum[w] * f[w];
    }
    const float inv = 1.0f / tot;
    FDY_GLOBAL float *o = out + ((int64_t)m * H + h) * D;
    for (int d = FDY_LOCAL_X; d < D; d += FDY_ATT_SIMDS * 32) {
        float v = 0.0f;
        for (int w = 0; w < FDY_ATT_SIMDS; w++) {
            v += s_acc[w][d] * f[w];
        }
        o[d] = v * inv;
    }
}
