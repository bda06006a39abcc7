#!/usr/bin/env bash
# GPU batch H (one call, carry .carry/h1 = gpu.tar.xz of tools/gpu-pack
# test_client_gpu kvs-bench-client kvstashd test_codec_gpu kvs-bench-codec
# kvs-bench-blend, plus old/kvs-bench-codec built from the commit before the
# dense-decode change): codec GPU test and decode speed old vs new, the
# client's device-get test and the 8K prefix hit with whole-value decodes on
# and off, the 8B blend TTFT with the disk tier and PyTorch in the same run.
# No model file needed (synthetic KV, seeded random weights). Logs under $OUT.
set -u
mkdir -p /tmp/kvs && tar -C /tmp/kvs -xJf .carry/h1/gpu.tar.xz
rm -rf .carry/gpu && ln -s /tmp/kvs/gpu .carry/gpu
nvidia-smi --query-gpu=name --format=csv,noheader; nproc; df -hT /tmp | tail -1
echo "== test_codec_gpu"
timeout 150 tools/gpu-run test_codec_gpu > $OUT/test_codec_gpu.log 2>&1; echo "rc=$?"
grep -E "asserts|tests |FAIL" $OUT/test_codec_gpu.log | head -6
for v in old new old new; do
  echo "== codec decode $v"
  b=kvs-bench-codec; [ $v = old ] && b=../old/kvs-bench-codec
  timeout 120 tools/gpu-run $b --gpu-only --shape both --tokens 1024,4096,8192 > $OUT/bench_codec_$v.log 2>&1; echo rc=$?
  grep -E "^GPU|^dense |^int8 " $OUT/bench_codec_$v.log | head -12
done
for dma in direct staged; do
  echo "== test_client_gpu $dma"
  KVS_CLIENT_DMA=$dma KVS_KVSTASHD=$PWD/.carry/gpu/bin/kvstashd timeout 150 tools/gpu-run test_client_gpu > $OUT/test_client_gpu_$dma.log 2>&1; echo "rc=$?"
  grep -E "asserts|tests |FAIL" $OUT/test_client_gpu_$dma.log | head -6
done
for b in 0 1 0 1; do
  echo "== bench client 8K KVS_CLIENT_BATCH=$b"
  KVS_CLIENT_BATCH=$b KVS_KVSTASHD=$PWD/.carry/gpu/bin/kvstashd timeout 150 tools/gpu-run kvs-bench-client --gpu --tokens 8192 --iters 9 --lpg 4 --profiles dense,int8,dense:0.1/0.1 > $OUT/bench_client_b$b.log 2>&1; echo rc=$?
  grep -vE "^\{" $OUT/bench_client_b$b.log | grep -E "shm|H2D|bits" | head -12
done
mkdir -p /tmp/kvs/disk
for s in "16 512" "10 600"; do
  set -- $s
  echo "== speed8b $1 x $2 with disk"
  timeout 150 tools/gpu-run kvs-bench-blend --speed8b --n-passages $1 --passage-tokens $2 --disk /tmp/kvs/disk > $OUT/speed8b_$1x$2.log 2>&1; echo rc=$?
  grep -vE '^\{' $OUT/speed8b_$1x$2.log | tail -17
done
