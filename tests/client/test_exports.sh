#!/usr/bin/env bash
# libkvstash exports its API and nothing else: every dynamic symbol it
# defines is a function declared in an installed public header, and every
# function those headers declare (not static inline) is exported.
#   test_exports.sh LIBKVSTASH.so HEADER...
set -euo pipefail
lib=$1; shift
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# defined, global dynamic symbols; toolchain/sanitizer ones are not ours
nm -D --defined-only "$lib" | awk '{print $3}' | grep -vE '^(_init|_fini|_edata|_end|__bss_start|__odr_asan\..*|__asan_.*|__ubsan_.*)$' \
  | sed 's/@.*//' | sort -u >"$tmp/exported"
python3 - "$tmp/api" "$@" <<'PY'
import re, sys
out, headers = sys.argv[1], sys.argv[2:]
names = set()
for h in headers:
    s = open(h).read()
    s = re.sub(r"/\*.*?\*/", " ", s, flags=re.S)
    s = re.sub(r"^\s*#.*?(?<!\\)$", " ", s, flags=re.M | re.S)  # preprocessor lines
    inline = set(re.findall(r"static\s+inline[^;{]*?\b(kvs_\w+)\s*\(", s))
    for m in re.finditer(r"(?<!\(\*)(?<![\w(])\b(kvs_\w+)\s*\(", s):
        if m.group(1) not in inline:
            names.add(m.group(1))
open(out, "w").write("".join(n + "\n" for n in sorted(names)))
PY
extra=$(comm -23 "$tmp/exported" "$tmp/api")
missing=$(comm -13 "$tmp/exported" "$tmp/api")
echo "libkvstash: $(wc -l <"$tmp/exported") exported symbols, $(wc -l <"$tmp/api") API functions in $# headers"
rc=0
if [ -n "$extra" ]; then echo "FAIL: exported but not in a public header:"; echo "$extra" | sed 's/^/  /'; rc=1; fi
if [ -n "$missing" ]; then echo "FAIL: declared in a public header but not exported:"; echo "$missing" | sed 's/^/  /'; rc=1; fi
exit $rc
