#!/usr/bin/env bash
# A tiny open-loop replay through the real kvs-serve on SmolLM2 (CPU): both
# modes run end to end, every request answered, the last line is the JSON the
# benchmark promises. Skips (77) without the model.
set -euo pipefail
build=${KVS_BUILD_DIR:?}
model=${KVS_MODEL_PATH:-$HOME/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$model" ] || { echo "no model at $model: skipped"; exit 77; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
"$build/tools/kvs-serve" --model "$model" --listen "127.0.0.1:$port" --ctx 4096 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log" "$out"' EXIT
out=$(mktemp)
for _ in $(seq 300); do
  python3 -c "import urllib.request,sys; urllib.request.urlopen(\"http://127.0.0.1:$port/health\", timeout=2)" 2>/dev/null && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.5
done
"$build/bench/trace/kvs-bench-trace" --serve "127.0.0.1:$port" --workload chat --rate 4 \
  --requests 2 --turns 2-2 --think 0.1 --max-out 8 --seed 7 --warmup 1 >"$out"
cat "$out"
tail -n 1 "$out" | python3 -c '
import json, sys
j = json.load(sys.stdin)
assert j["bench"] == "trace" and j["workload"] == "chat", j
for mode in ("kvstash", "no-reuse"):
    m = j[mode]
    assert m["requests"] == 4 and m["errors"] == 0, (mode, m)
    assert m["prompt_tokens"] > 0 and m["ttft_p50_ms"] > 0 and m["e2e_p99_ms"] >= m["ttft_p50_ms"], (mode, m)
    # the server-side breakdown (usage.kvstash) and the per-turn reuse are reported
    assert m["server_ttft_ms_mean"] > 0 and m["queue_ms_mean"] >= 0 and "history_reuse" in m, (mode, m)
print("trace replay: ok")
'
kill $pid
wait $pid   # a clean exit (LSan included)
