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
name=$(head -1 "$src/tools/model.sha256" | cut -d' ' -f3)   # SmolLM2, the default
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
KVS_MODEL_DIR="$tmp/cache" "$tmp/tools/fetch-model" no-such-model 2>"$tmp/err"; ok $? 3 "unknown model"
grep -q "unknown model" "$tmp/err"; ok $? 0 "unknown model message"
# every listed model has a pinned sum; a named model is looked up by its own file
cp "$src/tools/model.sha256" "$tmp/tools/"
n=$("$tmp/tools/fetch-model" --list | wc -l); ok "$n" 3 "three models listed"
for m in $("$tmp/tools/fetch-model" --list | cut -d' ' -f1); do
  f=$("$tmp/tools/fetch-model" --list | awk -v m="$m" '$1 == m {print $2}')
  grep -q "^[0-9a-f]\{64\}  $f\$" "$tmp/tools/model.sha256"; ok $? 0 "sha256 pinned for $m"
done
KVS_MODEL_DIR="$tmp/cache" "$tmp/tools/fetch-model" qwen2.5-coder-0.5b --verify 2>"$tmp/err"; ok $? 1 "absent qwen"
grep -q "missing" "$tmp/err"; ok $? 0 "absent qwen message"
echo "not a model" > "$tmp/cache/qwen2.5-coder-0.5b-instruct.gguf"
KVS_MODEL_DIR="$tmp/cache" "$tmp/tools/fetch-model" --verify qwen2.5-coder-0.5b 2>"$tmp/err"; ok $? 1 "wrong qwen"
grep -q "does not match" "$tmp/err"; ok $? 0 "wrong qwen message"
# the real cached model, when present, verifies against the committed checksum
if [ -n "${KVS_MODEL_PATH:-}" ] && [ -f "$KVS_MODEL_PATH" ]; then
  KVS_MODEL_DIR=$(dirname "$KVS_MODEL_PATH") "$src/tools/fetch-model" --verify >/dev/null; ok $? 0 "real model verifies"
fi
echo "fetch-model: $pass passed, $fail failed"
[ $fail = 0 ]
