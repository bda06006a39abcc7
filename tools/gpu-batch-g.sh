#!/usr/bin/env bash
# GPU batch G, the last of three back-to-back calls (the first two copy
# .carry/bf1/{a.tar.xz,m.aa} and .carry/bf2/m.ab into /tmp/kvs; this one brings
# .carry/bf3/m.ac): blend fidelity (agreement vs recompute ratio on the tuning
# items, the held-out items 100-149 once, the few-shot prompt style), then the
# 8B-shape time to first token. Logs under $OUT.
set -u
mkdir -p /tmp/kvs && cp .carry/bf*/* /tmp/kvs/ 2>/dev/null
[ -f /tmp/kvs/model.gguf ] || cat /tmp/kvs/m.aa /tmp/kvs/m.ab /tmp/kvs/m.ac > /tmp/kvs/model.gguf
sha256sum /tmp/kvs/model.gguf
rm -rf /tmp/kvs/gpu && tar -C /tmp/kvs -xJf /tmp/kvs/a.tar.xz
rm -rf .carry/gpu && mkdir -p .carry && ln -s /tmp/kvs/gpu .carry/gpu
nvidia-smi --query-gpu=name --format=csv,noheader
B="tools/gpu-run kvs-bench-blend --gpu --model /tmp/kvs/model.gguf --data /tmp/kvs/musique_s.json"
timeout 330 $B --items 0-99 --strategies full,cacheblend:0.7,cacheblend:0.9,cacheblend:1.0 > $OUT/curve.log 2>&1 &
timeout 330 $B --items 100-149 --strategies full,none,epic,epic:64,cacheblend,cacheblend:0.5,adaptive > $OUT/heldout.log 2>&1 &
timeout 330 $B --items 0-99 --strategies none,epic,cacheblend,cacheblend:0.5 --style 4 > $OUT/style4.log 2>&1 &
wait
for f in curve heldout style4; do echo "== $f"; grep -A12 "^strategy" $OUT/$f.log | grep -v '^{'; done
for s in "8 512" "10 600" "16 512"; do
  set -- $s
  echo "== speed8b $1 x $2"
  timeout 120 tools/gpu-run kvs-bench-blend --speed8b --n-passages $1 --passage-tokens $2 > $OUT/speed8b_$1x$2.log 2>&1
  grep -vE '^\{' $OUT/speed8b_$1x$2.log | tail -12
done
