#!/usr/bin/env bash
# Runs the parser and policy tests against an AddressSanitizer + UBSan build of the extension.
# Builds in a scratch copy of the tree so the normal build is untouched.
#   bash tools/asan_tests.sh [pytest args...]     (default: the GGUF, policy and cffi tests)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -C "$here" ls-files -z | (cd "$here" && xargs -0 cp --parents -t "$work")
# the tests look for ../shared/testdata next to the tree
if [ -e "$here/../shared" ] && [ ! -e "$work/../shared" ]; then ln -s "$(cd "$here/../shared" && pwd)" "$work/../shared"; fi
cd "$work"
CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
LDFLAGS="-fsanitize=address,undefined" python3 setup.py -q build_ext --inplace >/dev/null
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
make -s asan >/dev/null
export PYFOUNDRY_CFFI_LIB="$work/build/asan/libfoundry.so"
PYTHONPATH="$work" python3 -m pytest -q -p no:cacheprovider ${@:-tests/test_gguf.py tests/test_policies.py tests/test_cffi.py}
