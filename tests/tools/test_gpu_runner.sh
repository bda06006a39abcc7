#!/usr/bin/env bash
# tools/gpu without a GPU: split + recv bring a file over in parts and join it
# (sha256 checked), a corrupted part or a lost part is refused with a message,
# run sets the library path and the variables the tests read, ctest runs a
# pack's tests with their environment and skip code. All in a temp dir.
set -u
src=$1
g=$src/tools/gpu
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export KVS_GPU_PARTS_ROOT=$tmp/recv
pass=0 fail=0
ok() { if [ "$1" = "$2" ]; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $3 (got $1, want $2)"; fi; }

head -c 2621447 /dev/urandom >"$tmp/blob.bin" # 2.5 MiB + 7: three 1 MiB parts, the last short
"$g" split "$tmp/blob.bin" --part-mib 1 --name blob --dir "$tmp/parts" >"$tmp/split.out" 2>/dev/null; ok $? 0 "split"
ok "$(grep -c 'command: tools/gpu recv' "$tmp/split.out")" 3 "one device call printed per part"
grep -q "recv --dir $tmp/parts blob 3 3 && " "$tmp/split.out"; ok $? 0 "last call joins and names the path"
ok "$(ls "$tmp/parts/blob" | tr '\n' ' ')" "001 002 003 manifest " "part folders"
ok "$(grep -c '^part ' "$tmp/parts/blob/002/manifest")" 3 "every part carries the manifest"

# round trip, parts in order
out=$("$g" recv --dir "$tmp/parts" blob 1 3 2>/dev/null); ok "$?:$out" "0:" "part 1 kept, no path yet"
out=$("$g" recv --dir "$tmp/parts" blob 2 3 2>/dev/null); ok "$?:$out" "0:" "part 2 kept"
out=$("$g" recv --dir "$tmp/parts" blob 3 3); ok $? 0 "last part joins"
ok "$out" "$tmp/recv/blob/blob.bin" "joined path printed"
cmp -s "$out" "$tmp/blob.bin"; ok $? 0 "joined file equals the original"
ok "$("$g" path blob)" "$tmp/recv/blob/blob.bin" "path NAME"
ok "$(ls "$tmp/recv/blob" | tr '\n' ' ')" "blob.bin manifest " "parts removed after the join"

# a part lost between calls (the machine went cold): the last call says which
rm -rf "$tmp/recv"
"$g" recv --dir "$tmp/parts" blob 2 3 2>/dev/null
"$g" recv --dir "$tmp/parts" blob 3 3 2>"$tmp/err"; ok $? 1 "missing part refused"
grep -q "missing 1" "$tmp/err"; ok $? 0 "missing part named"
"$g" recv --dir "$tmp/parts" blob 1 3 >/dev/null; ok $? 0 "resent part completes the join"
cmp -s "$tmp/recv/blob/blob.bin" "$tmp/blob.bin"; ok $? 0 "joined after resend"

# a corrupted part is refused and not kept
rm -rf "$tmp/recv"
cp -r "$tmp/parts/blob" "$tmp/good"
printf 'X' | dd of="$tmp/parts/blob/002/part" bs=1 seek=4096 conv=notrunc status=none
"$g" recv --dir "$tmp/parts" blob 2 3 2>"$tmp/err"; ok $? 1 "corrupted part refused"
grep -q "does not match" "$tmp/err"; ok $? 0 "corrupted part message"
[ -e "$tmp/recv/blob/part.002" ]; ok $? 1 "corrupted part not kept"
# a part and manifest that agree with each other but not with the whole file's sha256
rm -rf "$tmp/recv"; rm -rf "$tmp/parts/blob"; cp -r "$tmp/good" "$tmp/parts/blob"
sed -i 's/^sha256 .*/sha256 0000000000000000000000000000000000000000000000000000000000000000/' \
  "$tmp/parts/blob"/00?/manifest
for i in 1 2; do "$g" recv --dir "$tmp/parts" blob $i 3 2>/dev/null; done
"$g" recv --dir "$tmp/parts" blob 3 3 2>"$tmp/err"; ok $? 1 "whole-file sha256 mismatch refused"
grep -q "does not match its sha256" "$tmp/err"; ok $? 0 "whole-file mismatch message"
[ -e "$tmp/recv/blob/blob.bin" ]; ok $? 1 "no joined file left"
"$g" recv --dir "$tmp/parts" blob 4 3 2>/dev/null; ok $? 1 "I > N refused"
"$g" recv --dir "$tmp/parts" nosuch 1 1 2>/dev/null; ok $? 1 "absent part refused"
"$g" split "$tmp/blob.bin" --part-mib 100 2>/dev/null; ok $? 1 "parts over 60 MiB refused"

# run and ctest over a hand-made pack (shell scripts stand in for binaries)
p=$tmp/pack
mkdir -p "$p/bin" "$p/lib"
printf '#!/bin/sh\necho "LD=$LD_LIBRARY_PATH"; echo "B=$KVS_BUILD_DIR"; echo "S=$KVS_SOURCE_DIR"; echo "D=$KVS_KVSTASHD"; echo "A=$*"; exit 3\n' >"$p/bin/show"
printf '#!/bin/sh\n[ "$X" = "$KVS_BUILD_DIR/y" ] || exit 1\n[ "$1" = "$KVS_SOURCE_DIR/z" ] || exit 1\n' >"$p/bin/pass"
printf '#!/bin/sh\nexit 77\n' >"$p/bin/skip"
printf '#!/bin/sh\necho boom; exit 2\n' >"$p/bin/kvstashd"
chmod +x "$p"/bin/*
cat >"$p/pack.json" <<'JSON'
{"commit": "x", "binaries": {},
 "tests": [{"name": "t_pass", "bin": "pass", "args": ["@SRC@/z"], "env": ["X=@PACK@/y"], "timeout": 30, "skip_rc": 77},
           {"name": "t_skip", "bin": "skip", "args": [], "env": [], "timeout": 30, "skip_rc": 77},
           {"name": "t_fail", "bin": "kvstashd", "args": [], "env": [], "timeout": 30, "skip_rc": 77}]}
JSON
out=$(env -u KVS_KVSTASHD "$g" run --pack "$p" show a --pack b); ok $? 3 "run returns the binary's exit code"
echo "$out" | grep -q "^LD=$p/lib"; ok $? 0 "pack's lib first on the library path"
echo "$out" | grep -qx "B=$p"; ok $? 0 "KVS_BUILD_DIR is the pack"
echo "$out" | grep -qx "S=$src"; ok $? 0 "KVS_SOURCE_DIR is the checkout"
echo "$out" | grep -qx "D=$p/bin/kvstashd"; ok $? 0 "KVS_KVSTASHD is the packed kvstashd"
echo "$out" | grep -qx "A=a --pack b"; ok $? 0 "arguments after BIN passed through"
KVS_GPU_PACK=$p "$g" run nosuch 2>/dev/null; ok $? 1 "unknown binary refused"
"$g" ctest --pack "$p" --log "$tmp/ctest.log" >"$tmp/ctest.out"; ok $? 1 "ctest fails when a test fails"
grep -q "t_pass .*Passed" "$tmp/ctest.out"; ok $? 0 "env and args rewritten for the pack"
grep -q "t_skip .*Skipped" "$tmp/ctest.out"; ok $? 0 "skip code 77"
grep -q "t_fail .*Failed (2)" "$tmp/ctest.out"; ok $? 0 "failure reported"
grep -q boom "$tmp/ctest.log"; ok $? 0 "output in the log"
"$g" ctest --pack "$p" -R 'pass|skip' >/dev/null; ok $? 0 "ctest -R selects"

echo "gpu runner: $pass passed, $fail failed"
[ $fail = 0 ]
