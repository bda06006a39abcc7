#!/usr/bin/python3
"""bench/trace/evict_sim.py KVSTASHD [QUESTIONS] [SEED] - the RAM tier's hit rate on the RAG
workload by RAM size and eviction policy, without an engine (what the H100 sweep measures along
with TTFT; this part needs no GPU).

The workload model of kvs-bench-trace --workload rag (Zipf 1.1 popularity over a seeded shuffle of
the passages of MuSiQue items 0-99, 5-10 distinct passages per question; its own draws, not the
C tool's), replayed through a real kvstashd as kvs-serve drives it: per passage one content
chunk, looked up; a hit is fetched (a GET, as the engine's load), a miss is put (what the server
stores after the answer). KV of a small layout (2 layers, 1 KV head, dim 64, fp16: 512 B/token;
the 8B shape's is 128 KiB/token: sizes scale together, so the RAM tier's share of the working set
is what matters), tokens per passage = words x 1.3. A first replay with a RAM tier larger than
everything measures the working set (kvstashd's RAM tier bytes after it); then each row starts a
fresh kvstashd (RAM tier P% of it, eviction cost or lru; its disk tier below keeps what RAM
evicts) and replays the same questions. Reported per row: chunks looked up, found in RAM / on
disk, the RAM hit rate over all questions and over the second half (warm). Needs numpy and the
Python binding (client/python; KVSTASH_LIB = build/rel/client/libkvstash.so); run with the
system python (/usr/bin/python3 has numpy here). Last line: JSON."""
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))
import numpy as np  # noqa: E402

import kvstash  # noqa: E402

MODEL = bytes(range(16))
LAYOUT = kvstash.Layout(2, 1, 64, "f16")


def passages(path):
    raw = subprocess.run(["zstd", "-dc", path], capture_output=True, check=True).stdout
    out = []
    for it in json.loads(raw)[:100]:  # items 100-149 are held out
        for p in it.get("ctxs", []):
            if p.get("text"):
                out.append(max(16, int(len(p["text"].split()) * 1.3)))
    return out


def questions(n_pass, n, seed):
    rnd = random.Random(seed)
    order = list(range(n_pass))
    rnd.shuffle(order)  # popularity rank -> passage
    w = [1 / (i + 1) ** 1.1 for i in range(n_pass)]
    qs = []
    for _ in range(n):
        k = rnd.randint(5, 10)
        pick = []
        while len(pick) < k:
            r = rnd.choices(range(n_pass), weights=w)[0]
            if order[r] not in pick:
                pick.append(order[r])
        qs.append(pick)
    return qs


def metric(port, name):
    """kvstashd's counter `name` (with its labels, if given), summed over label sets."""
    t = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    pat = re.escape(name) + (r" " if "{" in name else r"(?:\{[^}]*\})? ") + r"(\S+)"
    return sum(float(m.group(1)) for m in re.finditer(r"^" + pat, t, re.M))


def replay(kvsd, ram, policy, qs, toks, port):
    d = tempfile.mkdtemp(prefix="kvs-evict-")
    p = subprocess.Popen([kvsd, f"--data-dir={d}/db", f"--listen=ipc://{d}/s.sock",
                          f"--http=127.0.0.1:{port}", f"--ram_bytes={ram}", f"--eviction={policy}",
                          "--log-level=error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(f"{d}/s.sock"):
                break
            time.sleep(0.1)
        time.sleep(0.3)
        c = kvstash.Client(f"ipc://{d}/s.sock")
        ram_hits = disk_hits = looked = 0
        half = [0, 0]  # second half: looked up, found in RAM
        for qi, q in enumerate(qs):
            for pid in q:
                n = toks[pid]
                t = np.arange(n, dtype=np.int32) + pid * 100000
                ch = kvstash.chunk_spans(MODEL, t, [(0, n)])[0]
                st, _ = c.lookup(MODEL, t, [ch])
                looked += 1
                if qi >= len(qs) // 2:
                    half[0] += 1
                if st[0]:
                    if st[0] == 1:
                        ram_hits += 1
                        half[1] += qi >= len(qs) // 2
                    else:
                        disk_hits += 1
                    try:
                        c.get(MODEL, t, ch, LAYOUT)
                    except kvstash.Error:
                        pass  # evicted between lookup and get
                else:
                    c.put(MODEL, t, ch, LAYOUT, np.zeros(LAYOUT.shape(n), dtype=np.float16))
        ram_bytes = metric(port, 'kvstash_tier_bytes{tier="ram"}')
        ev = metric(port, "kvstash_evictions_total")
        c.close()
        return {"looked_up": looked, "ram_hits": ram_hits, "disk_hits": disk_hits,
                "ram_hit_rate": ram_hits / looked, "any_hit_rate": (ram_hits + disk_hits) / looked,
                "ram_hit_rate_2nd_half": half[1] / max(1, half[0]), "ram_tier_bytes": ram_bytes,
                "evictions": ev}
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    kvsd = sys.argv[1]
    nq = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    data = os.environ.get("KVS_RAG_DATA", os.path.join(HERE, "..", "..", "data", "rag",
                                                        "musique_s.json.zst"))
    toks = passages(data)
    qs = questions(len(toks), nq, seed)
    port = 27000 + os.getpid() % 1000
    full = replay(kvsd, 1 << 30, "cost", qs, toks, port)
    ws = int(full["ram_tier_bytes"])
    print(f"{len(toks)} passages, {nq} questions (seed {seed}); working set {ws} bytes "
          f"(RAM tier after a replay with 1 GiB), any-tier hit rate {full['any_hit_rate']:.3f}")
    rows = []
    for pct, pol in ((25, "cost"), (25, "lru"), (50, "cost"), (50, "lru"), (100, "cost")):
        r = replay(kvsd, ws * pct // 100, pol, qs, toks, port)
        r.update({"ram_pct": pct, "eviction": pol, "ram_bytes": ws * pct // 100})
        rows.append(r)
        print(f"RAM {pct:3d}% {pol:4s}: found in RAM {r['ram_hits']:5d} / on disk {r['disk_hits']:5d}"
              f" of {r['looked_up']} looked up: RAM hit rate {r['ram_hit_rate']:.3f} "
              f"(second half {r['ram_hit_rate_2nd_half']:.3f}), evictions {r['evictions']:.0f}",
              flush=True)
    print(json.dumps({"bench": "evict_sim", "questions": nq, "seed": seed, "working_set_bytes": ws,
                      "rows": rows}))


if __name__ == "__main__":
    main()
