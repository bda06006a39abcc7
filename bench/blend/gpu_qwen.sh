#!/bin/bash
# bench/blend/gpu_qwen.sh PACK MODEL DATA - issue 23's GPU programme for Qwen2.5-Coder-1.5B, on
# the lent GPU machine after `tools/gpu recv` joined MODEL; logs under $OUT (summary.txt first).
# PACK: a pack folder or its .tar.xz (tools/gpu pack ... kvs-bench-blend kvs-bench-model
# test_model_gpu kvs-serve kvstashd); DATA: musique_s.json. In order, overlapped where timing is
# not measured:
#   1. test_model_gpu (Qwen case: GPU vs CPU vs llama.cpp fixtures), beside
#   2. kvs-bench-blend on items 0-99, the strategy grid $GRID, in 5 processes (fidelity only:
#      their TTFTs share the GPU); bench/blend/agg_blend.py --select picks the configuration by
#      the rule fixed in it; then items 100-149 ONCE with none, that one, full (3 processes,
#      loaded ahead, waiting for the choice), beside kvs-serve + kvstashd and
#      bench/trace/quality.py (issue 21's quality check, the chosen strategy, policy load);
#   3. alone: TTFT of the chosen strategy vs full prefill, items 100-119 (--no-tf --max-new 1),
#      and through kvstashd on item 100 (--kvstashd rows with --kvd-strategy);
#   4. alone: kvs-bench-model, the 1.5B beside PyTorch SDPA of its shape.
# DRY=1: the same flow on the CPU with a small model (no --gpu, 2 passages, few items).
set -u
T0=$(date +%s)
el() { echo $(($(date +%s) - T0)); }
PACK=$1 M=$2 DATA=$3
case $PACK in
*.tar.xz) KVS_GPU_PACK=$(tools/gpu unpack "$PACK") ;;
*) KVS_GPU_PACK=$(cd "$PACK" && pwd) ;;
esac
export KVS_GPU_PACK
R="tools/gpu run"
AGG=${AGG:-bench/blend/agg_blend.py} QUAL=${QUAL:-bench/trace/quality.py}
W=${WORK:-/tmp/qw}
rm -rf "$W"
mkdir -p "$W"
S=$OUT/summary.txt
GRID=${GRID:-none,epic,epic:64,cacheblend,cacheblend:0.3,cacheblend:0.5,adaptive,full}
if [ -n "${DRY:-}" ]; then
  G="" X="--passages 2 --max-new 4" TUNE="0-0 1-1" HELD="100-100 101-101" TT=100-100 SC=100-101
  Q="--items 100-100 --passages 2 --max-tokens 4"
else
  G="--gpu" X="" TUNE="0-19 20-39 40-59 60-79 80-99" HELD="100-116 117-133 134-149" TT=100-119
  SC=100-119 Q="--items 100-149"
fi
{
  nvidia-smi -L 2>&1
  free -g | head -2
  nproc
} > "$W/env.txt"
echo "[$(el)s] start" | tee "$S"
B="$R kvs-bench-blend $G --model $M --data $DATA $X"

# 1 + 2: the GPU check beside the tuning runs
KVS_MODEL_DIR=$(dirname "$M") timeout 240 $R test_model_gpu > "$W/test_model_gpu.log" 2>&1 &
TP=$!
TPIDS=""
for r in $TUNE; do
  timeout ${TUNE_S:-170} $B --items $r --strategies $GRID > "$W/tune_$r.log" 2>&1 &
  TPIDS="$TPIDS $!"
done
wait $TP
rc=$?
echo "[$(el)s] test_model_gpu rc=$rc $(grep -E 'top1_agreement_gpu|gpu vs cpu|gpu: positions|Run Summary|asserts' "$W/test_model_gpu.log" | tr '\n' ' ')" | tee -a "$S"
# held-out and TTFT runs load the model now and wait for the choice
HPIDS=""
for r in $HELD; do
  timeout ${HELD_S:-300} $B --items $r --strategies-file "$W/held.strat" > "$W/held_$r.log" 2>&1 &
  HPIDS="$HPIDS $!"
done
# TTFT: loaded ahead too, runs alone after the held-out runs and the serving check
timeout ${TTFT_S:-500} $B --items $TT --no-tf --max-new 1 --strategies-file "$W/ttft.strat" \
  --kvstashd "$KVS_GPU_PACK/bin/kvstashd" > "$W/ttft.log" 2>&1 &
TTP=$!
wait $TPIDS
echo "[$(el)s] tuning done" | tee -a "$S"
python3 $AGG "$W"/tune_*.log > "$W/tune_table.txt" 2>&1
CH=$(python3 $AGG "$W"/tune_*.log --select)
CH=${CH:-cacheblend}
echo "chosen on items 0-99: $CH" | tee -a "$S"
cat "$W/tune_table.txt" >> "$S"
printf 'none,%s,full\n' "$CH" > "$W/held.tmp" && mv "$W/held.tmp" "$W/held.strat"
# the serving check (issue 21) beside the held-out runs
if [ -z "${NO_SERVE:-}" ]; then
  D=/tmp/qkd
  rm -rf $D
  mkdir -p $D
  $R kvstashd --data-dir=$D/db --listen=ipc://$D/d.sock --ram_bytes=16G --shm=off \
    --log-level=error > "$W/kvstashd.log" 2>&1 &
  KP=$!
  sleep 1
  $R kvs-serve $G --model "$M" --listen 127.0.0.1:18123 --kvstash ipc://$D/d.sock --ctx 16384 \
    --max-tokens 32 --strategy "$CH" --policy load > "$W/serve.log" 2>&1 &
  SP=$!
  for i in $(seq 120); do
    python3 -c "import urllib.request;urllib.request.urlopen('http://127.0.0.1:18123/health',timeout=2)" 2> /dev/null && break
    sleep 1
  done
  echo "[$(el)s] kvs-serve up" | tee -a "$S"
  timeout ${SERVE_S:-100} python3 $QUAL --serve 127.0.0.1:18123 --data "$DATA" \
    $Q --sc-items $SC --deadline ${SERVE_DEADLINE:-60} > "$W/serve_quality.log" 2>&1
  rc=$?
  echo "[$(el)s] serve quality rc=$rc" | tee -a "$S"
  tail -6 "$W/serve_quality.log" >> "$S"
  kill $SP $KP 2> /dev/null
  sleep 1
  kill -9 $SP $KP 2> /dev/null
fi
wait $HPIDS
echo "[$(el)s] held-out done" | tee -a "$S"
python3 $AGG "$W"/held_*.log > "$W/held_table.txt" 2>&1
cat "$W/held_table.txt" >> "$S"

# 3. TTFT alone
printf '%s,none\n%s\n' "$CH" "$CH" > "$W/ttft.tmp" && mv "$W/ttft.tmp" "$W/ttft.strat"
wait $TTP
rc=$?
echo "[$(el)s] ttft rc=$rc" | tee -a "$S"
python3 $AGG "$W/ttft.log" >> "$S" 2>&1
grep -A14 "through kvstashd on" "$W/ttft.log" >> "$S"

# 4. prefill speed vs PyTorch SDPA, alone
if [ -z "${DRY:-}" ] && [ -z "${NO_MODEL_BENCH:-}" ]; then
  timeout ${MODEL_S:-90} $R kvs-bench-model --model "$M" --no-8b --cpu-tokens 128 --decode 4 \
    --no-recompute --gpu-tokens 1024,4096,8192,16384 > "$W/bench_model.log" 2>&1
  rc=$?
  echo "[$(el)s] bench-model rc=$rc" | tee -a "$S"
  grep -E "^gpu|pytorch" "$W/bench_model.log" >> "$S"
fi
echo "[$(el)s] end" | tee -a "$S"
# what comes back: 8 files at most
cd "$W" && tar -czf "$OUT/logs.tgz" ./*.log ./*.txt ./*.strat 2> /dev/null
cp "$W/test_model_gpu.log" "$OUT/" 2> /dev/null
true
