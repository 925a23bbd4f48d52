/* fuzz_gguf.c - libFuzzer target for the GGUF parser.
 *
 * Build and run (clang with libFuzzer, e.g. Debian's clang + libclang-rt-14-dev):
 *   make fuzz && ./build/fuzz_gguf -max_total_time=300 -max_len=65536 build/fuzz_corpus
 * Seed the corpus with real GGUF files (or their first few KB).  The target parses the input,
 * walks every metadata value and tensor, dequantizes the first block of each tensor and
 * closes; when the metadata holds a vocabulary it also builds the tokenizer and encodes a
 * few strings.  Any crash, leak, overflow or hang is a bug. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "foundry.h"

static void walk(const fdy_value *v, int depth) {
    if (v->type != FDY_GGUF_ARRAY || depth > 16) {
        return;
    }
    if (v->elem_type == FDY_GGUF_ARRAY) {
        const fdy_value *items = (const fdy_value *)v->v.data;
        for (uint64_t i = 0; i < v->count; i++) {
            walk(&items[i], depth + 1);
        }
    } else if (v->elem_type == FDY_GGUF_STRING) {
        const fdy_str *s = (const fdy_str *)v->v.data;
        volatile char sink = 0;
        for (uint64_t i = 0; i < v->count; i++) {
            if (s[i].len) {
                sink ^= s[i].ptr[s[i].len - 1];
            }
        }
        (void)sink;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fdy_gguf *g = NULL;
    if (fdy_gguf_open_memory(data, size, &g) != FDY_OK) {
        return 0;
    }
    for (int64_t i = 0; i < fdy_gguf_n_kv(g); i++) {
        walk(fdy_gguf_kv_value(g, i), 0);
    }
    float block[4096];
    for (int64_t i = 0; i < fdy_gguf_n_tensors(g); i++) {
        const fdy_tensor_info *t = fdy_gguf_tensor(g, i);
        int64_t be = fdy_policy_block_elems(t->policy);
        if (t->n_elements >= be && be <= 4096) {
            fdy_policy_dequantize(t->policy, t->data, block, be);
        }
    }
    fdy_tokenizer *tok = NULL;
    if (fdy_gguf_find_kv(g, "tokenizer.ggml.tokens") >= 0 &&
        fdy_tokenizer_create(g, &tok) == FDY_OK) {
        static const char *texts[] = {"Hello world", " \t\n  x", "<s>caf\xc3\xa9 123", "\xff\xfe"};
        int32_t ids[256];
        int64_t n = 0;
        for (int i = 0; i < 4; i++) {
            fdy_tokenizer_encode(tok, texts[i], strlen(texts[i]), 1, i & 1, ids, 256, &n);
        }
        fdy_tokenizer_free(tok);
    }
    fdy_gguf_close(g);
    return 0;
}
