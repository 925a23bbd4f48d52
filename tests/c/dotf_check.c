/* dotf_check.c - runs a policy's GEMV dot hook (fdy_dotf_<name>, device part of
 * policies/<name>.c) on the host, for tests/test_gpu_sources.py.  Build with
 * -DPNAME=<name> -DPUPPER=<NAME> -Ipolicies -Imetal.  stdin: int32 n_blocks, then the block
 * bytes, then n_blocks * BLOCK_ELEMS float32 x; stdout: one line per block, the sum over all
 * parts of the hook, as %.9g. */
#include <stdio.h>
#include <stdlib.h>

#include "dialect.h"
#undef FDY_HOST /* the device part only, as the GPU composer takes it */

#define STR2(x) #x
#define STR(x) STR2(x)
#define CAT3(a, b, c) a##b##c
#define XCAT3(a, b, c) CAT3(a, b, c)
#include STR(PNAME.c)

#define BE XCAT3(FDY_, PUPPER, _BLOCK_ELEMS)
#define BB XCAT3(FDY_, PUPPER, _BLOCK_BYTES)
#define PARTS XCAT3(FDY_, PUPPER, _DOTF_PARTS)
#define DOTF XCAT3(fdy_dotf_, PNAME, )

int main(void) {
    int n = 0;
    if (fread(&n, 4, 1, stdin) != 1 || n <= 0 || n > (1 << 20)) {
        return 2;
    }
    /* blocks are copied to 16-byte aligned storage, as rows are on the device */
    uint8_t *w = aligned_alloc(16, ((size_t)n * BB + 15) / 16 * 16);
    float *x = malloc((size_t)n * BE * sizeof(float));
    if (!w || !x || fread(w, BB, (size_t)n, stdin) != (size_t)n ||
        fread(x, sizeof(float) * BE, (size_t)n, stdin) != (size_t)n) {
        return 3;
    }
    for (int b = 0; b < n; b++) {
        float s = 0.0f;
        for (int p = 0; p < PARTS; p++) {
            s += DOTF(w + (size_t)b * BB, p, x + (size_t)b * BE);
        }
        printf("%.9g\n", s);
    }
    free(w);
    free(x);
    return 0;
}
