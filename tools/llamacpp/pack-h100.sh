#!/usr/bin/env bash
# tools/llamacpp/pack-h100.sh - pack kvs-bench-llamacpp for the H100 run: the
# bench and kvstashd built against the CUDA libllama (build-cuda.sh first),
# their shared libraries (tools/gpu-pack), the MuSiQue file and the SmolLM2
# GGUF split in two (a carry holds 64 MiB), under .carry/llama-h100/:
#   a.tar.xz   bench + kvstashd + .so files + musique_s.json, model part 1
#   b.bin      model part 2
# On the H100 (two calls of the device tool, the machine stays warm between):
#   1. carry .carry/llama-h100/a.tar.xz:  mkdir -p /tmp/kvs && cp .carry/llama-h100/a.tar.xz /tmp/kvs/
#   2. carry .carry/llama-h100/b.bin:     tools/llamacpp/h100-run.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cuda_dir=${KVS_LLAMA_CUDA_DIR:-$HOME/.cache/kvstash/llama.cpp-cuda}
model=${KVS_MODEL_PATH:-$HOME/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf}
data=${KVS_RAG_DATA:-$root/../shared/data/rag/musique_s.json}
[ -f "$cuda_dir/build/bin/libllama.so" ] || { echo "no CUDA libllama: run tools/llamacpp/build-cuda.sh" >&2; exit 1; }
[ -f "$model" ] && [ -f "$data" ] || { echo "model or MuSiQue data missing" >&2; exit 1; }
KVS_LLAMA_DIR=$cuda_dir "$root/tools/gpu-pack" kvs-bench-llamacpp kvstashd
g=$root/.carry/gpu
mkdir -p "$g/cachesvc" && cp "$g/bin/kvstashd" "$g/cachesvc/kvstashd" # where the bench starts it
cp "$data" "$g/musique_s.json"
out=$root/.carry/llama-h100
rm -rf "$out" && mkdir -p "$out"
half=$(( $(stat -c %s "$model") / 2 ))
head -c "$half" "$model" >"$g/model.part1"
tail -c +$((half + 1)) "$model" >"$out/b.bin"
sha256sum "$model" | cut -d' ' -f1 >"$g/model.sha256"
tar -C "$root/.carry" -cJf "$out/a.tar.xz" gpu
rm -f "$g/model.part1"
ls -la "$out"
