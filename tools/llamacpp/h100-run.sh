#!/usr/bin/env bash
# tools/llamacpp/h100-run.sh - on the H100 once every file of pack-h100.sh is
# in /tmp/kvs: unpack, join the model, run kvs-bench-llamacpp with every
# layer on the GPU, and once with --gpu-layers 0 (weights on the host; llama.cpp
# may still offload large matrix products to the GPU).
# Logs and JSON lines under $OUT.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${OUT:-/tmp/kvs-out}
mkdir -p "$out"
tar -C "$root/.carry" -xJf /tmp/kvs/a.tar.xz
g=$root/.carry/gpu
cat /tmp/kvs/m.a? >/tmp/kvs/model.gguf
[ "$(sha256sum /tmp/kvs/model.gguf | cut -d' ' -f1)" = "$(cat "$g/model.sha256")" ] || { echo "model sha256 mismatch" >&2; exit 1; }
nvidia-smi -L | tee "$out/gpu.txt"
args=(--model /tmp/kvs/model.gguf --data "$g/musique_s.json" --item 0 --min-tokens 1024 --reps 5)
"$root/tools/gpu" run kvs-bench-llamacpp "${args[@]}" --gpu-layers 99 --threads 8 2>&1 | tee "$out/bench-gpu.log"
"$root/tools/gpu" run kvs-bench-llamacpp "${args[@]}" --gpu-layers 99 --threads 8 --min-tokens 2048 --item 2 2>&1 | tee "$out/bench-gpu-2k.log"
"$root/tools/gpu" run kvs-bench-llamacpp "${args[@]}" --gpu-layers 0 --threads 16 2>&1 | tee "$out/bench-cpu.log"
# llama.cpp's flash attention: V not transposed, so a restore is one copy per layer
"$root/tools/gpu" run kvs-bench-llamacpp "${args[@]}" --gpu-layers 99 --threads 8 --flash-attn 1 2>&1 | tee "$out/bench-gpu-fa.log"
"$root/tools/gpu" run kvs-bench-llamacpp "${args[@]}" --gpu-layers 99 --threads 8 --flash-attn 1 --min-tokens 2048 --item 2 2>&1 | tee "$out/bench-gpu-fa-2k.log"
grep -h '^{' "$out"/bench-*.log
