#!/usr/bin/env bash
# GPU batch, call 1 of 2 (see tools/gpu-pack): unpack, run the GPU tests and
# the benchmarks that need no model file. Logs under $OUT.
set -u
mkdir -p /tmp/kvs && cp .carry/c1/* /tmp/kvs/
tar -C .carry -xJf /tmp/kvs/gpu.tar.xz
xz -dc /tmp/kvs/musique_s.json.xz > /tmp/kvs/musique_s.json
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv > $OUT/gpu.txt
for t in test_gpu_device test_gpu_blend test_codec_gpu test_client_gpu; do
  echo "== $t"; timeout 300 tools/gpu-run $t > $OUT/$t.log 2>&1; echo "rc=$?"; grep -E "asserts|tests |FAIL|Test:" $OUT/$t.log | head -20
done
echo "== bench codec --gpu"; timeout 240 tools/gpu-run kvs-bench-codec --gpu --quick > $OUT/bench_codec_gpu.log 2>&1; echo rc=$?; tail -25 $OUT/bench_codec_gpu.log
echo "== bench blend --speed8b"; timeout 200 tools/gpu-run kvs-bench-blend --speed8b > $OUT/bench_blend_8b.log 2>&1; echo rc=$?
timeout 200 tools/gpu-run kvs-bench-blend --speed8b --n-passages 10 --passage-tokens 600 >> $OUT/bench_blend_8b.log 2>&1; echo rc=$?
grep -vE "^\{" $OUT/bench_blend_8b.log | tail -20
