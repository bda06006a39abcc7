#!/usr/bin/env bash
# GPU batch D, the last of three back-to-back calls (the first two copy
# .carry/llama-h100/{a.tar.xz,m.aa} and {m.ab,m.ac} into /tmp/kvs): the
# llama.cpp H100 run (tools/llamacpp/h100-run.sh), then, with the model now in
# /tmp/kvs/model.gguf, the model GPU tests and the prefill bench beside
# PyTorch SDPA from /tmp/kvs/m1.tar.xz (copied there by call 1 from .carry/m1; tools/gpu-pack test_model_gpu
# test_gpu_blend_engine kvs-bench-model, xz'd). Logs under $OUT.
set -u
mkdir -p /tmp/kvs && cp .carry/llama-h100/* /tmp/kvs/ 2>/dev/null
echo "== llama.cpp H100"
timeout 240 tools/llamacpp/h100-run.sh > $OUT/llama-h100.log 2>&1; echo rc=$?
grep -E "TTFT|turn|speedup|agree|^\{" $OUT/llama-h100.log | tail -20
rm -rf .carry/gpu; mkdir -p /tmp/kvs/m1; tar -C /tmp/kvs/m1 -xJf /tmp/kvs/m1.tar.xz
ln -s /tmp/kvs/m1/gpu .carry/gpu
export KVS_MODEL_PATH=/tmp/kvs/model.gguf
for t in test_model_gpu test_gpu_blend_engine; do
  echo "== $t"; timeout 150 tools/gpu-run $t > $OUT/$t.log 2>&1; echo "rc=$?"; grep -E "asserts|tests |FAIL" $OUT/$t.log | head -6
done
echo "== bench model"
timeout 200 tools/gpu-run kvs-bench-model --model /tmp/kvs/model.gguf --check-reference --torch-script bench/model/torch_prefill.py --gpu-tokens 1024,4096,8192,16384,32768 --cpu-tokens 512 --decode 8 > $OUT/bench_model.log 2>&1; echo rc=$?
grep -vE "^\{" $OUT/bench_model.log | tail -30
