#!/bin/bash
# bench/trace/gpu_trace.sh PACK.tar.xz TOKENIZER.gguf - the issue 21 workload run in one device
# call (~250 s on an H100, BUDGET bounds it): kvstashd + kvs-serve (Llama-3-8B shape, seeded random
# weights, the tokenizer of TOKENIZER, --stage-log) + kvs-bench-trace. Steps:
#   1. calibrate (unless CRATE / RRATE are given): each workload's no-reuse service time from a
#      short replay, and from it the rate at which the server without kvstash is ~BUSY busy;
#   2. chat, then rag, at that rate: no-reuse, then kvstash (RAM tier RAM, eviction cost);
#   3. the RAM tier at 25% (cost), 25% (lru), 50% (cost) and 100% (cost) of rag's working set (the
#      bytes its kvstash replay left in kvstashd), each on a fresh kvstashd under the same
#      kvs-serve, the same rag trace, kvstash mode, SDUR seconds of arrivals.
# Output under $OUT: one JSON per replay (<tag>.json: kvs-bench-trace's last line + tag + the
# settings), results.jsonl (all of them), summary.json (the goals' figures, built by
# bench/trace/summary.py), summary.txt (the human lines), trace.log, serve.log (one stage line
# per request), kvstashd.log, env.txt. Plot here afterwards: python3 bench/trace/plot.py $OUT.
# CPU dry run (SmolLM2, tiny rates and prompts; the end-to-end check, ~8 min on the 2-core box):
#   CPU=1 CRATE=0.02 RRATE=0.05 DUR=20 RDUR=20 SDUR=15 TSCALE=8 BUDGET=1500 \
#     CHAT_ARGS="--turns 2-3 --think 0.3 --user-passages 1-1 --max-out 8" \
#     RAG_ARGS="--passages 1-2 --max-out 8" bash bench/trace/gpu_trace.sh build/rel $(tools/fetch-model)
# Knobs (env): POLICY (auto|load, default auto), BUSY (0.8), DUR / RDUR / SDUR (seconds new
#   sessions start: chat 25 / rag 15 / sweep 12), CHAT_ARGS, RAG_ARGS (workload flags), RAM (32G),
#   CHUNK (prefix chunk tokens, 256), CRATE / RRATE (rates: skip the calibration), BUDGET (245 s:
#   no step starts after it), TSCALE (multiplies every replay's timeout: a slow CPU), SERVE_ARGS
#   (more kvs-serve flags), SKIP_CHAT / SKIP_SWEEP.
set -u
OUT=${OUT:-/tmp/gpu_trace_out}
mkdir -p "$OUT"
T0=$(date +%s)
HERE=$(cd "$(dirname "$0")" && pwd)
note() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$OUT/summary.txt"; }
if [ -n "${CPU:-}" ]; then
  R=""
  KVSD="$1/cachesvc/kvstashd" SERVE="$1/tools/kvs-serve" TRACE="$1/bench/trace/kvs-bench-trace"
  SERVE_MODEL=(--model "$2")
  CTX=${CTX:-8192}
else
  nvidia-smi -L > "$OUT/env.txt" 2>&1
  export KVS_GPU_PACK=$(tools/gpu unpack "$1")
  R="tools/gpu run"
  KVSD=kvstashd SERVE=kvs-serve TRACE=kvs-bench-trace
  SERVE_MODEL=(--random-8b --model "$2")
  CTX=${CTX:-16384}
fi
df -h /dev/shm /tmp >> "$OUT/env.txt" 2>&1
POLICY=${POLICY:-auto} BUSY=${BUSY:-0.8} DUR=${DUR:-25} RDUR=${RDUR:-15} SDUR=${SDUR:-12}
RAM=${RAM:-32G} CHUNK=${CHUNK:-256} BUDGET=${BUDGET:-245}
CHAT_ARGS=${CHAT_ARGS:---turns 2-12 --think 0.5 --user-passages 1-2 --max-out 8}
RAG_ARGS=${RAG_ARGS:---passages 5-10 --max-out 8}
export KVS_RAG_DATA=${KVS_RAG_DATA:-$PWD/data/rag/musique_s.json.zst} # the checkout's copy
SPORT=${SPORT:-18000} MPORT=${MPORT:-17879} D=${GT_DIR:-/tmp/kvs-gt}
rm -rf $D; mkdir -p $D
shm=off; [ "$(df -B1G --output=avail /dev/shm | tail -1)" -gt 40 ] && shm=on
echo "shm=$shm policy=$POLICY busy=$BUSY dur=$DUR/$RDUR/$SDUR chunk=$CHUNK ctx=$CTX" >> "$OUT/env.txt"
echo "chat: $CHAT_ARGS; rag: $RAG_ARGS; serve: ${SERVE_ARGS:-}" >> "$OUT/env.txt"
KPID= SPID=
trap '[ -n "$SPID" ] && kill $SPID 2>/dev/null; [ -n "$KPID" ] && kill $KPID 2>/dev/null' EXIT
trap 'exit 143' TERM INT # the EXIT trap then stops the servers (also: their PIDs in $D/pids)
# kvs-serve's stores after the last answers done (at most 30 s): a restarted kvstashd would
# otherwise receive the previous replay's late stores (hits the next replay did not earn)
drain() {
  [ -n "$SPID" ] || return 0
  python3 -c "
import json,time,urllib.request
for _ in range(300):
    h=json.loads(urllib.request.urlopen('http://127.0.0.1:$SPORT/health',timeout=5).read())
    r=h.get('reuse',{})
    if h.get('working')==0 and h.get('queued')==0 and r.get('stores_done',0)+r.get('stores_failed',0)+r.get('stores_dropped',0)>=r.get('stores_queued',0): break
    time.sleep(0.1)" 2>/dev/null
}
kvsd() { # kvsd RAM_BYTES EVICTION: a fresh kvstashd on the same socket
  drain
  [ -n "$KPID" ] && { kill $KPID; wait $KPID 2>/dev/null; }
  rm -rf $D/db; rm -f $D/d.sock
  echo "=== kvstashd ram=$1 eviction=$2" >> "$OUT/kvstashd.log"
  $R $KVSD --data-dir=$D/db --listen=ipc://$D/d.sock --http=127.0.0.1:$MPORT --ram_bytes=$1 \
    --shm=$shm --eviction=$2 --log-level=error >> "$OUT/kvstashd.log" 2>&1 &
  KPID=$!
  echo $KPID >> $D/pids
  for _ in $(seq 50); do [ -S $D/d.sock ] && break; sleep 0.2; done
  sleep 0.5
}
health() { python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:$SPORT/health',timeout=5).read().decode())"; }
kvsd $RAM cost
# shellcheck disable=SC2086
$R $SERVE "${SERVE_MODEL[@]}" --listen 127.0.0.1:$SPORT --kvstash ipc://$D/d.sock --ctx $CTX \
  --max-tokens 16 --policy $POLICY --chunk-tokens $CHUNK --stage-log ${SERVE_ARGS:-} \
  > "$OUT/serve.log" 2>&1 &
SPID=$!
echo $SPID >> $D/pids
for _ in $(seq 240); do health > /dev/null 2>&1 && break; sleep 0.5; done
note "kvs-serve up: $(health 2>&1)"
B="$R $TRACE --serve 127.0.0.1:$SPORT --metrics 127.0.0.1:$MPORT"
# replay TAG SECONDS EXTRA_JSON ARGS...: one kvs-bench-trace, its log appended to trace.log, its
# JSON line (with tag and settings) to TAG.json and results.jsonl
replay() {
  local tag=$1 lim=$2 extra=$3; shift 3
  [ $(($(date +%s) - T0)) -lt $BUDGET ] || { note "$tag: skipped (over the budget)"; return; }
  note "$tag: $*"
  timeout $((lim * ${TSCALE:-1})) $B "$@" > $D/last.log 2>&1
  local rc=$?
  { echo "=== $tag (rc $rc): $*"; cat $D/last.log; } >> "$OUT/trace.log"
  grep -v '^{' $D/last.log | grep -E 'busy|TTFT|turn|server side|stages|found in RAM|kvstashd' | tee -a "$OUT/summary.txt"
  tail -n 1 $D/last.log | python3 -c "
import json,sys
j=json.load(sys.stdin); j['tag']='$tag'; j['rc']=$rc; j['args']=sys.argv[1]; j['policy']='$POLICY'
j.update(json.loads(sys.argv[2]))
s=json.dumps(j); open('$OUT/$tag.json','w').write(s+'\n'); print(s)" "$*" "$extra" \
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

# 1-2. chat
if [ -z "${SKIP_CHAT:-}" ]; then
  [ -z "${CRATE:-}" ] && replay chat-calibrate 60 '{}' --workload chat --modes no-reuse --rate 2 \
    --requests 3 $CHAT_ARGS --warmup 2 --seed 11
  CRATE=${CRATE:-$(rate_for chat-calibrate $turns_mean 0.5 2>> "$OUT/summary.txt")}
  note "chat: $CRATE sessions/s (mean $turns_mean turns) for ~$BUSY busy without kvstash"
  replay chat 100 "{\"ram\":\"$RAM\",\"eviction\":\"cost\"}" --workload chat \
    --modes no-reuse,kvstash --rate $CRATE --requests 10000 --duration $DUR $CHAT_ARGS --warmup 3
  kvsd $RAM cost
fi
# 1-2. rag
[ -z "${RRATE:-}" ] && replay rag-calibrate 45 '{}' --workload rag --modes no-reuse --rate 1 \
  --requests 4 $RAG_ARGS --warmup 2 --seed 11
RRATE=${RRATE:-$(rate_for rag-calibrate 1 3 2>> "$OUT/summary.txt")}
note "rag: $RRATE questions/s for ~$BUSY busy without kvstash"
replay rag 70 "{\"ram\":\"$RAM\",\"eviction\":\"cost\"}" --workload rag --modes no-reuse,kvstash \
  --rate $RRATE --requests 10000 --duration $RDUR $RAG_ARGS --warmup 3
# 3. the RAM tier at 25 / 50 / 100% of rag's working set; cost vs lru at 25%
drain
WS=$(python3 -c "
import urllib.request,re
t=urllib.request.urlopen('http://127.0.0.1:$MPORT/metrics',timeout=5).read().decode()
v=[float(m.group(1)) for m in re.finditer(r'^kvstash_tier_bytes\{tier=\"(?:ram|disk)\"\} (\S+)', t, re.M)]
print(int(max(v)) if v else 0)" 2>/dev/null || echo 0)
note "rag working set: $WS bytes (the larger kvstashd tier after the rag replays)"
echo "{\"working_set_bytes\": $WS, \"crate\": \"${CRATE:-}\", \"rrate\": \"$RRATE\"}" > "$OUT/working_set.json"
if [ -z "${SKIP_SWEEP:-}" ]; then
  for cfg in "25 cost" "25 lru" "50 cost" "100 cost"; do
    set -- $cfg
    [ "$WS" -gt 0 ] || break
    kvsd $((WS * $1 / 100)) $2
    replay rag-ram$1-$2 35 "{\"ram_pct\":$1,\"ram_bytes\":$((WS * $1 / 100)),\"eviction\":\"$2\",\"working_set_bytes\":$WS}" \
      --workload rag --modes kvstash --rate $RRATE --requests 10000 --duration $SDUR $RAG_ARGS --warmup 0
  done
fi
note "server: $(health 2>&1)"
kill $SPID; wait $SPID 2>/dev/null
kill $KPID; wait $KPID 2>/dev/null
SPID= KPID=
tail -3 "$OUT/serve.log" >> "$OUT/summary.txt"
python3 "$HERE/summary.py" "$OUT" > "$OUT/summary.json" 2>> "$OUT/summary.txt"
cat "$OUT/summary.json" | tee -a "$OUT/summary.txt"
note "done"
