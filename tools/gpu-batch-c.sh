#!/usr/bin/env bash
# GPU batch C (one call, carry .carry/c1 = tools/gpu-pack output of
# test_client_gpu kvs-bench-client kvstashd, xz'd): the client's device-get
# test in both copy modes and the H100 prefix-hit row (8K tokens of the 8B
# shape) per profile, copy mode and layers-per-group. Logs under $OUT.
set -u
mkdir -p /tmp/kvs && tar -C /tmp/kvs -xJf .carry/c1/gpu.tar.xz
rm -rf .carry/gpu && ln -s /tmp/kvs/gpu .carry/gpu
nproc; df -h /dev/shm | tail -1
for dma in direct; do
  echo "== test_client_gpu $dma"
  KVS_CLIENT_DMA=$dma KVS_KVSTASHD=$PWD/.carry/gpu/bin/kvstashd timeout 150 tools/gpu-run test_client_gpu > $OUT/test_client_gpu_$dma.log 2>&1; echo "rc=$?"
  grep -E "asserts|tests |FAIL" $OUT/test_client_gpu_$dma.log | head -6
done
run() { # name, env, args
  local name=$1 dma=$2; shift 2
  echo "== bench client --gpu 8K $name"
  KVS_CLIENT_DMA=$dma KVS_KVSTASHD=$PWD/.carry/gpu/bin/kvstashd timeout 200 tools/gpu-run kvs-bench-client --gpu --tokens 8192 "$@" > $OUT/bench_client_$name.log 2>&1; echo rc=$?
  grep -vE "^\{" $OUT/bench_client_$name.log | grep -E "shm|H2D|bits" 
}
run main_a direct --iters 9 --lpg 4 --profiles dense,dense:0.1/0.1,int8
run main_b direct --iters 9 --lpg 4 --profiles dense,dense:0.1/0.1
