#!/bin/bash
# bench/trace/gpu_trace.sh PACK.tar.xz TOKENIZER.gguf - the issue 21 workload run in one device
# call: kvstashd + kvs-serve (Llama-3-8B shape, seeded random weights, the tokenizer of
# TOKENIZER) + kvs-bench-trace. Logs under $OUT (at most 8 files):
#   1. calibrate: the no-reuse service time of each workload (a short replay at low load), and
#      from it the rate at which the server without kvstash is ~BUSY busy;
#   2. chat, then rag, at that rate: no-reuse, then kvstash (RAM tier RAM, eviction cost);
#   3. the RAM tier at 25% (cost, then lru) and 50% (cost) of rag's working set (the bytes its
#      kvstash replay stored: kvstashd's disk tier holds every entry), each on a fresh kvstashd
#      under the same kvs-serve, same trace; 100% is step 2's kvstash row (RAM >= working set).
# Every replay is bounded (--duration, timeout); the whole call takes ~5 min on an H100.
# CPU dry run: CPU=1 bash bench/trace/gpu_trace.sh BUILD_DIR MODEL.gguf (with tiny rates: env).
# Knobs (env): POLICY (load|auto, default load), BUSY (0.8), DUR / SDUR (seconds new sessions
#   start in the main / sweep replays: 25 / 20), CHAT_ARGS, RAG_ARGS (workload flags), RAM (32G),
#   CHUNK (prefix chunk tokens, 256), CRATE / RRATE (rates, skip the calibration), BUDGET (400 s),
#   TSCALE (multiplies every replay's timeout: a slow CPU).
set -u
OUT=${OUT:-/tmp/gpu_trace_out}
mkdir -p "$OUT"
T0=$(date +%s)
note() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$OUT/summary.txt"; }
if [ -n "${CPU:-}" ]; then
  R=""
  KVSD="$1/cachesvc/kvstashd" SERVE="$1/tools/kvs-serve" TRACE="$1/bench/trace/kvs-bench-trace"
  SERVE_MODEL=(--model "$2")
else
  nvidia-smi -L > "$OUT/env.txt" 2>&1
  export KVS_GPU_PACK=$(tools/gpu unpack "$1")
  R="tools/gpu run"
  KVSD=kvstashd SERVE=kvs-serve TRACE=kvs-bench-trace
  SERVE_MODEL=(--random-8b --model "$2")
fi
df -h /dev/shm /tmp >> "$OUT/env.txt" 2>&1
POLICY=${POLICY:-load} BUSY=${BUSY:-0.8} DUR=${DUR:-25} SDUR=${SDUR:-20} RAM=${RAM:-32G}
CHUNK=${CHUNK:-256} BUDGET=${BUDGET:-400} # seconds: no new step starts after BUDGET
CHAT_ARGS=${CHAT_ARGS:---turns 3-8 --think 0.5 --user-passages 2-4 --max-out 8}
RAG_ARGS=${RAG_ARGS:---passages 5-10 --max-out 8}
export KVS_RAG_DATA=${KVS_RAG_DATA:-$PWD/data/rag/musique_s.json.zst} # the checkout's copy
SPORT=${SPORT:-18000} MPORT=${MPORT:-17879} D=${GT_DIR:-/tmp/kvs-gt}
rm -rf $D; mkdir -p $D
shm=off; [ "$(df -B1G --output=avail /dev/shm | tail -1)" -gt 40 ] && shm=on
echo "shm=$shm policy=$POLICY busy=$BUSY dur=$DUR chunk=$CHUNK" >> "$OUT/env.txt"
KPID=
kvsd() { # kvsd RAM_BYTES EVICTION: a fresh kvstashd on the same socket
  [ -n "$KPID" ] && { kill $KPID; wait $KPID 2>/dev/null; }
  rm -rf $D/db; rm -f $D/d.sock
  echo "=== kvstashd ram=$1 eviction=$2" >> "$OUT/kvstashd.log"
  $R $KVSD --data-dir=$D/db --listen=ipc://$D/d.sock --http=127.0.0.1:$MPORT --ram_bytes=$1 \
    --shm=$shm --eviction=$2 --log-level=error >> "$OUT/kvstashd.log" 2>&1 &
  KPID=$!
  for _ in $(seq 50); do [ -S $D/d.sock ] && break; sleep 0.2; done
  sleep 0.5
}
health() { python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:$SPORT/health',timeout=5).read().decode())"; }
kvsd $RAM cost
$R $SERVE "${SERVE_MODEL[@]}" --listen 127.0.0.1:$SPORT --kvstash ipc://$D/d.sock --ctx 16384 \
  --max-tokens 16 --policy $POLICY --chunk-tokens $CHUNK > "$OUT/serve.log" 2>&1 &
SPID=$!
for _ in $(seq 240); do health > /dev/null 2>&1 && break; sleep 0.5; done
note "kvs-serve up: $(health 2>&1)"
B="$R $TRACE --serve 127.0.0.1:$SPORT --metrics 127.0.0.1:$MPORT"
# replay TAG SECONDS ARGS...: one kvs-bench-trace, its log appended to trace.log, its JSON line
# (tagged) to results.jsonl
replay() {
  local tag=$1 lim=$2; shift 2
  [ $(($(date +%s) - T0)) -lt $BUDGET ] || { note "$tag: skipped (over the budget)"; return; }
  note "$tag: $*"
  timeout $((lim * ${TSCALE:-1})) $B "$@" > $D/last.log 2>&1
  local rc=$?
  { echo "=== $tag (rc $rc): $*"; cat $D/last.log; } >> "$OUT/trace.log"
  grep -v '^{' $D/last.log | grep -E 'busy|TTFT|turn|server side|kvstashd' | tee -a "$OUT/summary.txt"
  tail -n 1 $D/last.log | python3 -c "import json,sys; j=json.load(sys.stdin); j['tag']='$tag'; print(json.dumps(j))" \
    >> "$OUT/results.jsonl" 2>/dev/null || note "$tag: no JSON line"
}
touch "$OUT/results.jsonl"
# the rate at which the server without kvstash is BUSY busy, from a calibration's JSON line:
# service time = busy share / requests per second; chat sessions bring `turns` requests each
rate_for() { # rate_for TAG MEAN_TURNS FALLBACK: FALLBACK when the calibration gave no figures
  python3 -c "
import json,sys
s=None
for l in open('$OUT/results.jsonl'):
    j=json.loads(l)
    if j.get('tag')=='$1':
        m=j['no-reuse']
        if m['req_per_s']>0 and m['server_busy']>0: s=m['server_busy']/m['req_per_s']
if s is None:
    print('$3'); print('$1: no figures, rate $3', file=sys.stderr)
else:
    print('%.4f' % ($BUSY/s/$2)); print('$1: service %.1f ms per request' % (1e3*s), file=sys.stderr)"
}
turns_mean=$(echo "$CHAT_ARGS" | python3 -c "import sys,re; m=re.search(r'--turns (\d+)-(\d+)', sys.stdin.read()); print((int(m.group(1))+int(m.group(2)))/2 if m else 7)")

# 1-2. chat (SKIP_CHAT=1: straight to rag)
if [ -z "${SKIP_CHAT:-}" ]; then
[ -z "${CRATE:-}" ] && replay chat-calibrate 90 --workload chat --modes no-reuse --rate 2 --requests 3 $CHAT_ARGS --warmup 2 --seed 11
CRATE=${CRATE:-$(rate_for chat-calibrate $turns_mean 0.5 2>> "$OUT/summary.txt")}
note "chat: $CRATE sessions/s (mean $turns_mean turns) for ~$BUSY busy without kvstash"
replay chat 150 --workload chat --modes no-reuse,kvstash --rate $CRATE --requests 10000 --duration $DUR $CHAT_ARGS --warmup 3
fi
# 1-2. rag
kvsd $RAM cost
[ -z "${RRATE:-}" ] && replay rag-calibrate 60 --workload rag --modes no-reuse --rate 1 --requests 4 $RAG_ARGS --warmup 2 --seed 11
RRATE=${RRATE:-$(rate_for rag-calibrate 1 3 2>> "$OUT/summary.txt")}
note "rag: $RRATE questions/s for ~$BUSY busy without kvstash"
replay rag 120 --workload rag --modes no-reuse,kvstash --rate $RRATE --requests 10000 --duration $DUR $RAG_ARGS --warmup 3
# 3. the RAM tier at 25% / 50% of rag's working set; cost vs lru at 25%
WS=$(python3 -c "
import urllib.request,re
t=urllib.request.urlopen('http://127.0.0.1:$MPORT/metrics',timeout=5).read().decode()
m=re.search(r'^kvstash_tier_bytes\{tier=\"disk\"\} (\S+)', t, re.M)
print(int(float(m.group(1))) if m else 0)")
note "rag working set: $WS bytes (kvstashd's disk tier after the rag replays)"
for cfg in "25 cost" "25 lru" "50 cost"; do
  set -- $cfg
  [ "$WS" -gt 0 ] || break
  kvsd $((WS * $1 / 100)) $2
  replay rag-ram$1-$2 90 --workload rag --modes kvstash --rate $RRATE --requests 10000 --duration $SDUR $RAG_ARGS --warmup 3
done
note "server: $(health 2>&1)"
kill $SPID; wait $SPID 2>/dev/null
kill $KPID; wait $KPID 2>/dev/null
tail -3 "$OUT/serve.log" >> "$OUT/summary.txt"
note "done"
