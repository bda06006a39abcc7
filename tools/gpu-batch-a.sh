#!/usr/bin/env bash
# GPU batch A, call 1 of 2: unpack (tools/gpu-pack output + the first half of
# the model), run the GPU tests that need no model file and the 8B blend
# speed runs. Logs under $OUT. Call 2 (carry .carry/a2): see the README of
# bench/RESULTS.md's GPU section - reassemble the model in /tmp/kvs, then
# test_model_gpu and kvs-bench-model.
set -u
mkdir -p /tmp/kvs && cp .carry/a1/* /tmp/kvs/
tar -C /tmp/kvs -xJf /tmp/kvs/gpu.tar.xz
xz -dc /tmp/kvs/musique_s.json.xz > /tmp/kvs/musique_s.json
rm -rf .carry/gpu && ln -s /tmp/kvs/gpu .carry/gpu
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv > $OUT/gpu.txt
for t in ${KVS_GPU_TESTS:-test_gpu_blend test_gpu_blend_engine}; do
  echo "== $t"; timeout 120 tools/gpu-run $t > $OUT/$t.log 2>&1; echo "rc=$?"; grep -E "asserts|tests |FAIL|max" $OUT/$t.log | head -12
done
echo "== bench blend --speed8b"
timeout 150 tools/gpu-run kvs-bench-blend --speed8b > $OUT/bench_blend_8b.log 2>&1; echo rc=$?
timeout 150 tools/gpu-run kvs-bench-blend --speed8b --n-passages 16 --passage-tokens 512 >> $OUT/bench_blend_8b.log 2>&1; echo rc=$?
grep -vE "^\{" $OUT/bench_blend_8b.log | tail -30
