#!/usr/bin/env bash
# GPU batch C (one call, carry .carry/c1 = tools/gpu-pack output of
# test_client_gpu kvs-bench-client kvstashd, xz'd): the client's device-get
# test and the H100 prefix-hit row (8K tokens of the 8B shape) per profile and
# layers-per-group. Logs under $OUT.
set -u
mkdir -p /tmp/kvs && tar -C /tmp/kvs -xJf .carry/c1/gpu.tar.xz
rm -rf .carry/gpu && ln -s /tmp/kvs/gpu .carry/gpu
nproc; df -h /dev/shm | tail -1
echo "== test_client_gpu"
KVS_KVSTASHD=$PWD/.carry/gpu/bin/kvstashd timeout 150 tools/gpu-run test_client_gpu > $OUT/test_client_gpu.log 2>&1; echo "rc=$?"
grep -E "asserts|tests |FAIL|Run Summary" -A0 $OUT/test_client_gpu.log | head -8
for lpg in 1 4; do
  echo "== bench client --gpu 8K lpg $lpg"
  KVS_KVSTASHD=$PWD/.carry/gpu/bin/kvstashd timeout 200 tools/gpu-run kvs-bench-client --gpu --tokens 8192 --iters 5 --lpg $lpg --profiles int8,kivi4,dense > $OUT/bench_client_gpu_lpg$lpg.log 2>&1; echo rc=$?
  grep -vE "^\{" $OUT/bench_client_gpu_lpg$lpg.log | tail -14
done
