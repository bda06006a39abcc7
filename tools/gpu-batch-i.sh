#!/usr/bin/env bash
# GPU batch I (one call, carry .carry/h1 as for batch H; the last shot of a
# session's device time, so every step is short and line-buffered): dense GPU
# decode old vs new kernel (dense and int8 only, 8B and SmolLM2 shapes), the
# 8K prefix hit with whole-value decodes on and off (dense), the 8B blend
# TTFT with the disk tier and PyTorch. Logs under $OUT.
set -u
mkdir -p /tmp/kvs && tar -C /tmp/kvs -xJf .carry/h1/gpu.tar.xz
rm -rf .carry/gpu && ln -s /tmp/kvs/gpu .carry/gpu
nvidia-smi --query-gpu=name --format=csv,noheader; df -hT /tmp | tail -1
export KVS_BENCH_GPU_PROFILES=dense,int8 KVS_BENCH_GPU_NO_ENC=1
for v in old new; do
  echo "== codec decode $v"
  b=kvs-bench-codec; [ $v = old ] && b=../old/kvs-bench-codec
  timeout 60 stdbuf -oL tools/gpu-run $b --gpu-only --shape both --tokens 1024,8192 > $OUT/bench_codec_$v.log 2>&1; echo rc=$?
  grep -E "^GPU|^dense |^int8 " $OUT/bench_codec_$v.log | head -12
done
for b in 1 0; do
  echo "== bench client 8K KVS_CLIENT_BATCH=$b"
  KVS_CLIENT_BATCH=$b KVS_KVSTASHD=$PWD/.carry/gpu/bin/kvstashd timeout 75 stdbuf -oL tools/gpu-run kvs-bench-client --gpu --tokens 8192 --iters 7 --lpg 4 --profiles dense > $OUT/bench_client_b$b.log 2>&1; echo rc=$?
  grep -vE "^\{" $OUT/bench_client_b$b.log | grep -E "shm|H2D|bits" | head -8
done
mkdir -p /tmp/kvs/disk
echo "== speed8b 16 x 512 with disk"
timeout 90 stdbuf -oL tools/gpu-run kvs-bench-blend --speed8b --n-passages 16 --passage-tokens 512 --disk /tmp/kvs/disk > $OUT/speed8b_16x512.log 2>&1; echo rc=$?
grep -vE '^\{' $OUT/speed8b_16x512.log | tail -17
