/* weights.metal - access to one weight slot, generic over its policy.
 *
 * The composer pastes this text once per slot i, with FDY_W_DECODE / FDY_W_BLOCK_ELEMS /
 * FDY_W_BLOCK_BYTES / FDY_W_SUB_ELEMS naming the slot's policy (copies of FDY_W<i>_*) and
 * FDY_SLOT(name) appending the suffix _w<i>, so one source can hold several formats (fused
 * Q/K/V with mixed policies).  A row of K weights is K / BLOCK_ELEMS blocks; a block is
 * BLOCK_ELEMS / SUB_ELEMS sub-blocks, the unit one decode call writes.
 */

/* bytes of one row of K weights */
FDY_FN int64_t FDY_SLOT(fdy_w_row_bytes)(int K) {
    return (int64_t)(K / FDY_W_BLOCK_ELEMS) * FDY_W_BLOCK_BYTES;
}

/* the SUB_ELEMS floats of sub-block s (counted from the start of the row) */
FDY_FN void FDY_SLOT(fdy_w_decode)(FDY_GLOBAL const uint8_t *row, int s,
                                   FDY_THREAD float *out) {
    const int spb = FDY_W_BLOCK_ELEMS / FDY_W_SUB_ELEMS;
    FDY_W_DECODE(row + (int64_t)(s / spb) * FDY_W_BLOCK_BYTES, s % spb, out);
}

/* one SIMD group's dot product of a weight row with h (K): h = x, or h = (x * scale) * nw
 * when nw is given (the fused RMSNorm).  Lane l takes runs of `run` consecutive sub-blocks
 * (at least 8 elements: wide, coalesced reads for the float formats), the group strides
 * through the row; every lane returns the total. */
FDY_FN float FDY_SLOT(fdy_w_dot)(FDY_GLOBAL const uint8_t *row, FDY_GLOBAL const float *x,
                                 FDY_GLOBAL const float *nw, float scale, int K, int lane) {
    const int run = FDY_W_SUB_ELEMS >= 8 ? 1 : 8 / FDY_W_SUB_ELEMS;
    const int S = K / FDY_W_SUB_ELEMS;
    float acc = 0.0f;
    float buf[FDY_W_SUB_ELEMS];
    for (int s0 = lane * run; s0 < S; s0 += 32 * run) {
        for (int u = 0; u < run; u++) {
            const int s = s0 + u;
            if (s < S) {
                FDY_SLOT(fdy_w_decode)(row, s, buf);
                FDY_GLOBAL const float *xs = x + s * FDY_W_SUB_ELEMS;
                if (nw) {
                    FDY_GLOBAL const float *ns = nw + s * FDY_W_SUB_ELEMS;
                    for (int i = 0; i < FDY_W_SUB_ELEMS; i++) {
                        acc += buf[i] * ((xs[i] * scale) * ns[i]);
                    }
                } else {
                    for (int i = 0; i < FDY_W_SUB_ELEMS; i++) {
                        acc += buf[i] * xs[i];
                    }
                }
            }
        }
    }
    return fdy_simd_sum(acc);
}
