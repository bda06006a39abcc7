#!/usr/bin/env bash
# GPU batch F, the last of three back-to-back calls (the first two copy
# .carry/bf1/{a.tar.xz,m.aa} and .carry/bf2/m.ab into /tmp/kvs; this one brings
# .carry/bf3/m.ac): the blend fidelity sweep on MuSiQue items (tuning set by
# default), several chunk encodings side by side. Logs under $OUT.
#   tools/gpu-batch-f.sh ITEMS STRATEGIES CTX...
set -u
items=${1:-0-99}; strat=${2:-full,none,epic,cacheblend,adaptive}; shift 2 || true
mkdir -p /tmp/kvs && cp .carry/bf*/* /tmp/kvs/ 2>/dev/null
if [ ! -f /tmp/kvs/model.gguf ]; then
  cat /tmp/kvs/m.aa /tmp/kvs/m.ab /tmp/kvs/m.ac > /tmp/kvs/model.gguf
  sha256sum /tmp/kvs/model.gguf
fi
rm -rf /tmp/kvs/gpu && tar -C /tmp/kvs -xJf /tmp/kvs/a.tar.xz
rm -rf .carry/gpu && mkdir -p .carry && ln -s /tmp/kvs/gpu .carry/gpu
nvidia-smi --query-gpu=name --format=csv,noheader
for x in "${@:-0}"; do
  timeout ${KVS_T:-540} tools/gpu-run kvs-bench-blend --gpu --model /tmp/kvs/model.gguf \
    --data /tmp/kvs/musique_s.json --items "$items" --strategies "$strat" --chunk-ctx "$x" \
    ${KVS_BLEND_ARGS:-} > "$OUT/blend_ctx$x.log" 2>&1 &
done
wait
for x in "${@:-0}"; do echo "== chunk ctx $x"; grep -A20 "^strategy" "$OUT/blend_ctx$x.log" | grep -v '^{'; done
