#!/usr/bin/env python3
"""bench/trace/ab_turns.py HOST:PORT [TURNS] [PASSAGES_PER_TURN] - a paired check of what reuse
saves per chat turn, for a noisy machine: each turn of one conversation is sent twice back to
back, reuse off then on (the same prompt, greedy answers), and the server's own figures
(usage.kvstash: TTFT in the server and its stages) are printed side by side. The stores of the
reuse request finish (kvs-serve /health idle) before the next turn. Text from the repo's MuSiQue
data (KVS_RAG_DATA or data/rag/musique_s.json.zst, items 0-99 only).

Used for the CPU finding of issue 21 run 3 (chat mean TTFT in the server the same in both modes
although half the prompt tokens were reused): modes a minute apart on a shared box differ by
more than reuse saves; paired requests do not."""
import json
import os
import subprocess
import sys
import time
import urllib.request


def post(base, body):
    r = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                               {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(r, timeout=600).read())


def idle(base):
    for _ in range(600):
        h = json.loads(urllib.request.urlopen(base + "/health", timeout=10).read())
        ru = h.get("reuse", {})
        done = ru.get("stores_done", 0) + ru.get("stores_failed", 0) + ru.get("stores_dropped", 0)
        if h.get("working") == 0 and h.get("queued") == 0 and done >= ru.get("stores_queued", 0):
            return
        time.sleep(0.1)


def passages():
    path = os.environ.get("KVS_RAG_DATA", "data/rag/musique_s.json.zst")
    raw = subprocess.run(["zstd", "-dc", path], capture_output=True, check=True).stdout
    items = json.loads(raw)
    out = []
    for it in items[:100]:
        for p in it.get("ctxs", []):
            if p.get("text"):
                out.append(p["text"])
    return out


def main():
    base = "http://" + sys.argv[1]
    turns = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    per = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    ps = passages()
    msgs = []
    print("turn prompt  reused | no-reuse ms | kvstash ms (load_wait recompute prefill other) | saved")
    for t in range(turns):
        text = "\n\n".join(ps[(t * per + i) * 7 % len(ps)] for i in range(per))
        msgs.append({"role": "user", "content": text + "\n\nSummarise the above in one line."})
        res = {}
        for reuse in (False, True):
            body = {"messages": msgs, "max_tokens": 8, "kvstash": {"reuse": reuse}}
            j = post(base, body)
            res[reuse] = j
            idle(base)
        a, b = res[False]["usage"]["kvstash"], res[True]["usage"]["kvstash"]
        st = b.get("stages_ms", {})
        other = b["ttft_ms"] - st.get("load_wait", 0) - st.get("recompute", 0) - st.get("prefill", 0)
        print(f"{t + 1:4d} {res[True]['usage']['prompt_tokens']:6d} {b['reused_tokens']:7d} | "
              f"{a['ttft_ms']:11.1f} | {b['ttft_ms']:10.1f} ({st.get('load_wait', 0):.1f} "
              f"{st.get('recompute', 0):.1f} {st.get('prefill', 0):.1f} {other:.1f}) | "
              f"{1 - b['ttft_ms'] / a['ttft_ms']:.0%}", flush=True)
        msgs.append({"role": "assistant", "content": res[True]["choices"][0]["message"]["content"]})


if __name__ == "__main__":
    main()
