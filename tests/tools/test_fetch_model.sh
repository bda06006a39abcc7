#!/usr/bin/env bash
# tools/fetch-model refuses a model whose sha256 does not match, and accepts the
# right one. Works on copies in a temp dir so it never touches the real cache.
set -u
src=$1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { if [ "$1" = "$2" ]; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $3 (got $1, want $2)"; fi; }
mkdir -p "$tmp/tools" "$tmp/cache"
cp "$src/tools/fetch-model" "$src/tools/model.sha256" "$tmp/tools/"
name=$(cut -d' ' -f3 < "$src/tools/model.sha256")
# absent: --verify says so and fails
KVS_MODEL_DIR="$tmp/cache" "$tmp/tools/fetch-model" --verify 2>"$tmp/err"; ok $? 1 "absent model"
grep -q "missing" "$tmp/err"; ok $? 0 "absent message"
# a file whose content is wrong is refused
echo "not a model" > "$tmp/cache/$name"
KVS_MODEL_DIR="$tmp/cache" "$tmp/tools/fetch-model" --verify 2>"$tmp/err"; ok $? 1 "wrong content"
grep -q "does not match" "$tmp/err"; ok $? 0 "wrong content message"
# a file whose content matches a recorded checksum is accepted (the recorded sum is swapped)
echo "$(sha256sum "$tmp/cache/$name" | cut -d' ' -f1)  $name" > "$tmp/tools/model.sha256"
out=$(KVS_MODEL_DIR="$tmp/cache" "$tmp/tools/fetch-model" --verify); ok $? 0 "matching content"
ok "$out" "$tmp/cache/$name" "printed path"
KVS_MODEL_DIR="$tmp/cache" "$tmp/tools/fetch-model" --bogus 2>/dev/null; ok $? 3 "usage error"
# the real cached model, when present, verifies against the committed checksum
if [ -n "${KVS_MODEL_PATH:-}" ] && [ -f "$KVS_MODEL_PATH" ]; then
  KVS_MODEL_DIR=$(dirname "$KVS_MODEL_PATH") "$src/tools/fetch-model" --verify >/dev/null; ok $? 0 "real model verifies"
fi
echo "fetch-model: $pass passed, $fail failed"
[ $fail = 0 ]
