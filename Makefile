# Builds the C core as a plain shared library (build/libfoundry.so) and the C-level tools:
#   make            the shared library, used by tests/test_cffi.py through cffi
#   make asan       the library with AddressSanitizer + UBSan (build/asan/libfoundry.so)
#   make fuzz       the libFuzzer target for the GGUF parser (needs clang): build/fuzz_gguf
# The Python extension is built by setup.py from the same sources.
CC ?= cc
.DEFAULT_GOAL := build/libfoundry.so
GEN := foundry_c/src/gpu/sources_gen.c
SRCS := $(wildcard foundry_c/src/*.c foundry_c/src/cpu/*.c policies/*.c) \
	$(filter-out $(GEN),$(wildcard foundry_c/src/gpu/*.c)) $(GEN)
INC := -Ifoundry_c/include -Ifoundry_c/src -Ifoundry_c/src/gpu -Ipolicies -Imetal
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -O2 -g -fPIC -ffp-contract=off -fno-strict-aliasing \
	-Wall -Wextra -Wno-unused-parameter -Wno-unused-function
LIBS := -lm -lpthread -ldl
PYTHON ?= python3

# the kernel texts (metal/, policies/) embedded as C strings for the GPU composer
$(GEN): tools/embed_gpu_sources.py $(wildcard metal/*.h metal/*.metal policies/*.c policies/*.def)
	$(PYTHON) tools/embed_gpu_sources.py $@ && touch $@

build/libfoundry.so: $(SRCS) $(wildcard foundry_c/include/*.h foundry_c/src/*.h foundry_c/src/gpu/*.h foundry_c/src/cpu/*.h policies/*.h policies/*.def metal/*.h)
	@mkdir -p build
	$(CC) $(CFLAGS_BASE) $(INC) -shared -o $@ $(SRCS) $(LIBS)

asan: build/asan/libfoundry.so
build/asan/libfoundry.so: $(SRCS)
	@mkdir -p build/asan
	$(CC) $(CFLAGS_BASE) -O1 -fsanitize=address,undefined -fno-omit-frame-pointer $(INC) \
		-shared -o $@ $(SRCS) $(LIBS)

fuzz: build/fuzz_gguf
build/fuzz_gguf: tests/c/fuzz_gguf.c $(SRCS)
	@mkdir -p build
	clang $(CFLAGS_BASE) -O1 -fsanitize=fuzzer,address,undefined $(INC) -o $@ \
		tests/c/fuzz_gguf.c $(SRCS) $(LIBS)

clean:
	rm -rf build $(GEN)

.PHONY: asan fuzz clean
