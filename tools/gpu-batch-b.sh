#!/usr/bin/env bash
# GPU batch B (one call, carry .carry/b1 = tools/gpu-pack output, xz'd): client
# and codec GPU tests, the H100 prefix-hit row of kvs-bench-client, the 8B
# blend split, codec GPU decode. Logs under $OUT.
set -u
mkdir -p /tmp/kvs && tar -C /tmp/kvs -xJf .carry/b1/gpu.tar.xz
rm -rf .carry/gpu && ln -s /tmp/kvs/gpu .carry/gpu
for t in test_client_gpu test_codec_gpu; do
  echo "== $t"; timeout 150 tools/gpu-run $t > $OUT/$t.log 2>&1; echo "rc=$?"; grep -E "asserts|tests |FAIL" $OUT/$t.log | head -8
done
df -h /dev/shm | tail -1
echo "== bench client --gpu 8K"
KVS_KVSTASHD=$PWD/.carry/gpu/bin/kvstashd timeout 200 tools/gpu-run kvs-bench-client --gpu --tokens 8192 --iters 5 --profiles int8,dense > $OUT/bench_client_gpu.log 2>&1; echo rc=$?
tail -22 $OUT/bench_client_gpu.log
echo "== bench blend --speed8b 16x512"
timeout 120 tools/gpu-run kvs-bench-blend --speed8b --n-passages 16 --passage-tokens 512 > $OUT/bench_blend_8b.log 2>&1; echo rc=$?
grep -vE "^\{" $OUT/bench_blend_8b.log | tail -13
echo "== bench codec --gpu-only 8B 8K"
timeout 100 tools/gpu-run kvs-bench-codec --gpu-only --shape 8b --tokens 8192 > $OUT/bench_codec_gpu.log 2>&1; echo rc=$?
grep -vE "^\{" $OUT/bench_codec_gpu.log | tail -14
