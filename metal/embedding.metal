/* embedding.metal - out (M, K) = rows ids (M,) of a table (V, K) in slot 0's policy, decoded
 * (exact: the decode of the CPU).  grid (M), any group size. */

FDY_KERNEL fdy_embedding(FDY_BUFFER(FDY_GLOBAL const uint8_t *table, 0),
                         FDY_BUFFER(FDY_GLOBAL const int32_t *ids, 1),
                         FDY_BUFFER(FDY_GLOBAL float *out, 2),
                         FDY_SCALAR(int, K, 3) FDY_KERNEL_INDICES) {
    const int m = FDY_GROUP_X;
    FDY_GLOBAL const uint8_t *row = table + (int64_t)ids[m] * fdy_w_row_bytes_w0(K);
    FDY_GLOBAL float *o = out + (int64_t)m * K;
    float buf[FDY_W0_SUB_ELEMS];
    for (int s = FDY_LOCAL_X; s < K / FDY_W0_SUB_ELEMS; s += FDY_GROUP_SIZE_X) {
        fdy_w_decode_w0(row, s, buf);
        for (int i = 0; i < FDY_W0_SUB_ELEMS; i++) {
            o[s * FDY_W0_SUB_ELEMS + i] = buf[i];
        }
    }
}
