#!/bin/bash
# bench/gpu_open.sh PACK.tar.xz TOKENIZER.gguf - the open GPU measurements of issues 17 and 21 in
# ONE device call (~500 s; every step has its own timeout), run on the lent machine from the repo
# root with $OUT set. PACK: `tools/gpu pack --tests --xz --out DIR kvs-bench-blend kvstashd
# kvs-bench-model test_model_gpu kvs-serve kvs-bench-trace` (the same pack then serves
# bench/blend/gpu_qwen.sh, issue 23, after the model's parts: docs/gpu.md "The open programme").
# TOKENIZER: a GGUF holding only SmolLM2's tokenizer (`tools/gguf-meta`), for kvs-serve --random-8b.
# Logs: $OUT/open/ (rc.txt: one line per step) and $OUT/trace/ (bench/trace/gpu_trace.sh's).
#   1. the gpu-label tests (shared-memory device puts, GPU encoder, reuse/, model kernels)
#   2. issue 17, store: 8K tokens of 8B-shape KV stored from device memory, rows by stage
#   3. issue 17, controller: plan vs always load / recompute / full prefill, SmolLM2 and 8B shapes
#   4. issue 21: the workload trace (chat + RAG, both modes, RAM tier 25% cost/lru, 50%, 100%)
# SKIP="ctest store ctl8b trace" leaves steps out.
set -u
PACK=$1 TOK=$2
P=$(tools/gpu unpack "$PACK") || exit 1
export KVS_GPU_PACK=$P
L=$OUT/open
mkdir -p "$L"
{
  nvidia-smi -L
  free -g
  nproc
  date -u
} > "$L/env.txt" 2>&1
skip() { case " ${SKIP:-} " in *" $1 "*) return 0 ;; esac; return 1; }
step() { # NAME TIMEOUT CMD... : runs CMD into $L/NAME.log, one line in rc.txt
  local n=$1 t=$2
  shift 2
  skip "$n" && return 0
  local t0
  t0=$(date +%s)
  timeout -k 5 "$t" "$@" > "$L/$n.log" 2>&1
  echo "$n rc=$? ${t}s-cap $(($(date +%s) - t0))s" | tee -a "$L/rc.txt"
}
B=(tools/gpu run kvs-bench-blend --speed8b --n-passages 16 --passage-tokens 512 --kvstashd "$P/bin/kvstashd")
step ctest 150 tools/gpu ctest --log "$L/ctest_detail.log"
step store 150 "${B[@]}" --store-only
step ctlsmol 60 "${B[@]}" --ctl-only --shape smol
step ctl8b 120 "${B[@]}" --ctl-only
if ! skip trace; then
  mkdir -p "$OUT/trace"
  OUT="$OUT/trace" GT_DIR=/tmp/kvs-gt timeout -k 5 300 bash bench/trace/gpu_trace.sh "$PACK" "$TOK"
  echo "trace rc=$?" | tee -a "$L/rc.txt"
  while read -r p; do kill "$p" 2> /dev/null; done < <(cat /tmp/kvs-gt/pids 2> /dev/null)
fi
grep -v '^{' "$L/store.log" 2> /dev/null | tail -20
tail -n 30 "$OUT/trace/summary.txt" 2> /dev/null
true
