/* doti_check.c - runs, on the host, the q8 variant's device code of a policy: the activation
 * quantizer of its dot_type (fdy_actq_scale_<dt> / fdy_actq_code_<dt>, device part of
 * policies/<dt>.c, driven as metal/matmul.metal's fdy_quantize_act drives it) and the integer
 * GEMV hook (fdy_doti_calc_<name>), for tests/test_gpu_sources.py.  Build with
 * -DPNAME=<name> -DPUPPER=<NAME> -DANAME=<dot_type> -DAUPPER=<DOT_TYPE> -Ipolicies -Imetal.
 * stdin: int32 n_blocks, the block bytes, n_blocks * BLOCK_ELEMS float32 x.  stdout (binary):
 * the dequantized activations d * q (float32, one per element), then per block the sum over
 * its parts of the integer hook (float32). */
#include <stdio.h>
#include <stdlib.h>

#include "dialect.h"
#undef FDY_HOST /* the device parts only, as the GPU composer takes them */

#define STR2(x) #x
#define STR(x) STR2(x)
#define CAT3(a, b, c) a##b##c
#define XCAT3(a, b, c) CAT3(a, b, c)
#include STR(PNAME.c)
#if !defined(SAME_POLICY)
#include STR(ANAME.c)
#endif

#define BE XCAT3(FDY_, PUPPER, _BLOCK_ELEMS)
#define BB XCAT3(FDY_, PUPPER, _BLOCK_BYTES)
#define PARTS XCAT3(FDY_, PUPPER, _DOTF_PARTS)
#define WORDS XCAT3(FDY_, PUPPER, _DOTF_WORDS)
#define LOAD XCAT3(fdy_dotf_load_, PNAME, )
#define CALC XCAT3(fdy_doti_calc_, PNAME, )
#define G XCAT3(FDY_, AUPPER, _ACT_GROUP)
#define SCALE XCAT3(fdy_actq_scale_, ANAME, )
#define CODE XCAT3(fdy_actq_code_, ANAME, )

int main(void) {
    int n = 0;
    if (fread(&n, 4, 1, stdin) != 1 || n <= 0 || n > (1 << 20)) {
        return 2;
    }
    const size_t ne = (size_t)n * BE;
    uint8_t *w = aligned_alloc(16, ((size_t)n * BB + 15) / 16 * 16);
    float *x = malloc(ne * sizeof(float)), *xf = malloc(ne * sizeof(float));
    uint8_t *xq = aligned_alloc(16, (ne + 15) / 16 * 16);
    float *xd = malloc(ne / G * sizeof(float));
    if (!w || !x || !xf || !xq || !xd || fread(w, BB, (size_t)n, stdin) != (size_t)n ||
        fread(x, sizeof(float), ne, stdin) != ne) {
        return 3;
    }
    for (size_t g = 0; g < ne / G; g++) { /* fdy_quantize_act, one group at a time */
        const float *v = x + g * G;
        float amax = 0.0f, vmax = 0.0f;
        for (int i = 0; i < G; i++) {
            const float a = v[i] < 0.0f ? -v[i] : v[i];
            if (a > amax) {
                amax = a;
                vmax = v[i];
            }
        }
        float id;
        xd[g] = SCALE(amax, vmax, &id);
        for (int i = 0; i < G; i++) {
            const int q = CODE(v[i], id);
            xq[g * G + i] = (uint8_t)(q & 0xFF);
            xf[g * G + i] = xd[g] * (float)q;
        }
    }
    fwrite(xf, sizeof(float), ne, stdout);
    for (int b = 0; b < n; b++) {
        float s = 0.0f;
        for (int p = 0; p < PARTS; p++) {
            uint32_t r[WORDS];
            LOAD(w + (size_t)b * BB, p, r);
            s += CALC(r, p, xq + (size_t)b * BE, xd + (size_t)b * BE / G);
        }
        fwrite(&s, sizeof s, 1, stdout);
    }
    free(w);
    free(x);
    free(xf);
    free(xq);
    free(xd);
    return 0;
}
