#!/usr/bin/env python3
"""bench/trace/summary.py OUT_DIR - the issue 21 goals' figures from gpu_trace.sh's JSON files.

Reads OUT_DIR/results.jsonl (one kvs-bench-trace JSON line per replay, tagged by gpu_trace.sh)
and prints one JSON object: per workload (chat, rag) the TTFT p50/p99 of both modes, the
speedups, the no-reuse server's busy share and each goal's verdict; per RAM-tier sweep row
(rag-ramP-POLICY) the hit rates (chunks found in any tier; found in the RAM tier, by kvs-serve's
lookups: the one the eviction comparison uses, as kvstashd's disk tier below RAM keeps what RAM
evicts; prompt tokens reused) and the TTFT."""
import json
import sys


def load(out):
    rows = {}
    with open(out + "/results.jsonl") as f:
        for line in f:
            line = line.strip()
            if line:
                j = json.loads(line)
                rows[j["tag"]] = j
    return rows


def mode_row(m):
    keys = ["requests", "errors", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "e2e_p50_ms",
            "server_busy", "token_hit_rate", "chunk_hit_rate", "ram_share_of_bytes_out",
            "stores_dropped", "stores_skipped", "full_prefill_requests", "requests_that_loaded",
            "server_ttft_ms_mean", "queue_ms_mean"]
    r = {k: m[k] for k in keys if k in m}
    if "stages_ms" in m:
        r["stages_ms_mean"] = {k: round(v["mean"], 3) for k, v in m["stages_ms"].items()}
    return r


def main():
    out = sys.argv[1]
    rows = load(out)
    s = {"goals": {}, "workloads": {}, "sweep": []}
    need = {"chat": (5.0, 3.0), "rag": (3.0, None)}
    for w in ("chat", "rag"):
        j = rows.get(w)
        if not j or "kvstash" not in j or "no-reuse" not in j:
            continue
        a, b = j["kvstash"], j["no-reuse"]
        p50 = b["ttft_p50_ms"] / a["ttft_p50_ms"] if a["ttft_p50_ms"] > 0 else 0
        p99 = b["ttft_p99_ms"] / a["ttft_p99_ms"] if a["ttft_p99_ms"] > 0 else 0
        s["workloads"][w] = {"rate": j.get("rate"), "args": j.get("args"), "policy": j.get("policy"),
                             "kvstash": mode_row(a), "no-reuse": mode_row(b),
                             "ttft_p50_speedup": round(p50, 3), "ttft_p99_speedup": round(p99, 3)}
        busy_ok = b.get("server_busy", 0) >= 0.5
        g50, g99 = need[w]
        s["goals"][w] = {"no_reuse_busy": round(b.get("server_busy", 0), 3), "busy_ok": busy_ok,
                         "p50": round(p50, 3), "p50_goal": g50, "p50_met": busy_ok and p50 >= g50}
        if g99:
            s["goals"][w].update({"p99": round(p99, 3), "p99_goal": g99,
                                  "p99_met": busy_ok and p99 >= g99})
    for tag, j in sorted(rows.items()):
        if not tag.startswith("rag-ram") or "kvstash" not in j:
            continue
        a = j["kvstash"]
        s["sweep"].append({"tag": tag, "ram_pct": j.get("ram_pct"), "eviction": j.get("eviction"),
                           "ram_bytes": j.get("ram_bytes"),
                           "chunk_hit_rate": a.get("chunk_hit_rate"),
                           "ram_share_of_bytes_out": a.get("ram_share_of_bytes_out"),
                           "token_hit_rate": a.get("token_hit_rate"),
                           # chunks kvs-serve found in kvstashd's RAM tier / all it looked up
                           "ram_hit_rate": a.get("ram_hit_rate", 0),
                           "disk_hit_rate": a.get("disk_hit_rate", 0),
                           "ttft_p50_ms": a.get("ttft_p50_ms"), "ttft_p99_ms": a.get("ttft_p99_ms"),
                           "evictions": a.get("kvstashd", {}).get("kvstash_evictions_total")})
    c = {r["eviction"]: r for r in s["sweep"] if r["ram_pct"] == 25}
    if "cost" in c and "lru" in c:
        x, y = c["cost"], c["lru"]
        s["goals"]["eviction_25pct"] = {
            "cost_ram_hit": x["ram_hit_rate"], "lru_ram_hit": y["ram_hit_rate"],
            "cost_token_hit": x["token_hit_rate"], "lru_token_hit": y["token_hit_rate"],
            "cost_ram_share": x["ram_share_of_bytes_out"], "lru_ram_share": y["ram_share_of_bytes_out"],
            "cost_ttft_p50_ms": x["ttft_p50_ms"], "lru_ttft_p50_ms": y["ttft_p50_ms"],
            "met": x["ram_hit_rate"] > y["ram_hit_rate"]
            and (x["ttft_p50_ms"] or 1e18) < (y["ttft_p50_ms"] or 0)}
    print(json.dumps(s, indent=1))


if __name__ == "__main__":
    main()
