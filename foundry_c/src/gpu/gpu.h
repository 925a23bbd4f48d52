/* gpu.h - what the GPU backends share inside the core: the embedded kernel texts and the
 * composer.  The texts (preludes, kernel templates of metal/, device parts of policies/) are
 * compiled into the library by tools/embed_gpu_sources.py (sources_gen.c). */
#ifndef FDY_GPU_H
#define FDY_GPU_H

#include "foundry.h"

typedef struct fdy_gpu_text {
    const char *name; /* "prelude:cuda", "template:matmul", "policy:q4_k" */
    const char *text;
} fdy_gpu_text;

extern const fdy_gpu_text fdy_gpu_texts[]; /* ends with {NULL, NULL} */

/* the text called `name`, or NULL */
const char *fdy_gpu_text_find(const char *name);

#endif
