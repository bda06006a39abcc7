#!/usr/bin/env bash
# tools/llamacpp/pack-h100.sh - pack kvs-bench-llamacpp for the H100 run: the
# bench and kvstashd built against the CUDA libllama (build-cuda.sh first),
# their shared libraries (tools/gpu pack), the MuSiQue file and the SmolLM2
# GGUF split in 30 MB parts (one carry holds 64 MiB), under .carry/llama-h100/:
#   a.tar.xz          bench + kvstashd + .so files + musique_s.json + model sha256
#   m.aa m.ab m.ac m.ad   the model
# On the H100, calls of the device tool while the machine stays warm, each
# carrying at most 64 MiB of those files and running
#   mkdir -p /tmp/kvs && cp .carry/llama-h100/* /tmp/kvs/
# and the last one: ... && tools/llamacpp/h100-run.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cuda_dir=${KVS_LLAMA_CUDA_DIR:-$HOME/.cache/kvstash/llama.cpp-cuda}
model=${KVS_MODEL_PATH:-$HOME/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf}
data=${KVS_RAG_DATA:-$root/data/rag/musique_s.json.zst}
[ -f "$cuda_dir/build/bin/libllama.so" ] || { echo "no CUDA libllama: run tools/llamacpp/build-cuda.sh" >&2; exit 1; }
[ -f "$model" ] && [ -f "$data" ] || { echo "model or MuSiQue data missing" >&2; exit 1; }
KVS_LLAMA_DIR=$cuda_dir "$root/tools/gpu" pack kvs-bench-llamacpp kvstashd
g=$root/.carry/gpu
mkdir -p "$g/cachesvc" && cp "$g/bin/kvstashd" "$g/cachesvc/kvstashd" # where the bench starts it
zstd -dcfq "$data" >"$g/musique_s.json" # plain JSON on the H100 (-f: a plain file passes through)
out=$root/.carry/llama-h100
rm -rf "$out" && mkdir -p "$out"
split -b 30M "$model" "$out/m."
sha256sum "$model" | cut -d' ' -f1 >"$g/model.sha256"
tar -C "$root/.carry" -cJf "$out/a.tar.xz" gpu
ls -la "$out"
