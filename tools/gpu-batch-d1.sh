#!/usr/bin/env bash
# GPU batch D, call 1: copy the carried files to /tmp/kvs; where nsys is
# installed, profile the dense device get (8K tokens, 8B shape, .carry/c1).
set -u
mkdir -p /tmp/kvs && cp .carry/llama-h100/* /tmp/kvs/ && cp .carry/m1/gpu.tar.xz /tmp/kvs/m1.tar.xz
ls /tmp/kvs; nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
echo "nsys: ${nsys:-none}"
[ -n "$nsys" ] || exit 0
mkdir -p /tmp/kvs/c1 && tar -C /tmp/kvs/c1 -xJf .carry/c1/gpu.tar.xz
rm -rf .carry/gpu && ln -s /tmp/kvs/c1/gpu .carry/gpu
KVS_CLIENT_DMA=direct KVS_KVSTASHD=$PWD/.carry/gpu/bin/kvstashd timeout 150 "$nsys" profile -o $OUT/dense -t cuda,osrt --force-overwrite true --stats=true tools/gpu-run kvs-bench-client --gpu --tokens 8192 --iters 2 --lpg 4 --profiles dense:0.1/0.1 > $OUT/nsys.log 2>&1; echo rc=$?
grep -A14 -E "cuda_gpu_kern_sum|cuda_api_sum" $OUT/nsys.log | cut -c1-200 | head -40
grep -E "shm dense" $OUT/nsys.log
rm -f $OUT/*.nsys-rep $OUT/*.sqlite
