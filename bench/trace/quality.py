#!/usr/bin/env python3
"""bench/trace/quality.py - answers with kvstash reuse against the same server without it
(issue 21's quality goal), through a running kvs-serve attached to kvstashd.

  bench/trace/quality.py --serve HOST:PORT --data MUSIQUE.json[.zst] [--items 100-149]
                         [--sc-items 100-119] [--max-tokens 32] [--deadline SECONDS]
                         [--passages N]

RAG: for each item, a warm-up request stores the passages (given as `documents`, in reverse
order, reuse on, 1 token); then the question with the passages in their own order, once with
`kvstash.reuse` false (the no-reuse server) and once with reuse on (the passages now come from
kvstash at new positions). SCBench-style shared context: for items i, i+1 the 20 passages of both
are one shared context; session 1 asks question i, then (turn 2, the history carried) question
i+1; session 2, new, asks question i+1 over the same context. Each request runs without and with
reuse. Answers are compared after SQuAD normalisation (agreement) and scored by F1 against the
gold answers. Greedy decoding: the server ignores sampling parameters.
Last line: JSON."""
import argparse
import collections
import json
import re
import string
import subprocess
import sys
import time
import urllib.request

SYSTEM = ("You are a helpful assistant. Answer the question using the passages. "
          "Reply with a short answer only.")


def load_items(path):
    if path.endswith(".zst"):
        try:
            import zstandard
            with open(path, "rb") as f:
                raw = zstandard.ZstdDecompressor().stream_reader(f).read()
        except ImportError:
            raw = subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout
    else:
        with open(path, "rb") as f:
            raw = f.read()
    return json.loads(raw)


def normalize(s):  # SQuAD's normalize_answer
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1(pred, golds):
    best = 0.0
    pt = normalize(pred).split()
    for g in golds:
        gt = normalize(g).split()
        common = collections.Counter(pt) & collections.Counter(gt)
        same = sum(common.values())
        if same == 0:
            continue
        p, r = same / len(pt), same / len(gt)
        best = max(best, 2 * p * r / (p + r))
    return best


def chat(server, messages, documents, reuse, max_tokens):
    body = {"model": "any", "messages": messages, "max_tokens": max_tokens,
            "documents": documents, "kvstash": {"reuse": reuse}}
    req = urllib.request.Request("http://%s/v1/chat/completions" % server,
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        out = json.loads(r.read())
    text = out["choices"][0]["message"]["content"] or ""
    kv = out.get("usage", {}).get("kvstash", {})
    return text, kv


PASSAGES = None  # --passages: the first N of each item (quick runs)


def docs_of(item):
    return ["%s\n%s" % (c.get("title", ""), c["text"]) for c in item["ctxs"][:PASSAGES]]


def golds_of(item):
    a = item.get("answers") or item.get("answer") or []
    return [a] if isinstance(a, str) else list(a)


class Tally:
    def __init__(self):
        self.n = self.agree = self.exact = 0
        self.f1_off = self.f1_on = 0.0
        self.reused = self.prompt_reused = 0

    def add(self, off, on, golds, kv):
        self.n += 1
        self.exact += off == on
        self.agree += off == on or normalize(off) == normalize(on)
        self.f1_off += f1(off, golds)
        self.f1_on += f1(on, golds)
        self.reused += kv.get("reused_tokens", 0)
        self.prompt_reused += kv.get("reused_tokens", 0) > 0

    def row(self, name):
        n = max(self.n, 1)
        return {"name": name, "n": self.n, "agreement": self.agree / n, "exact": self.exact / n,
                "f1_off": self.f1_off / n, "f1_on": self.f1_on / n,
                "f1_delta_points": 100 * (self.f1_on - self.f1_off) / n,
                "mean_reused_tokens": self.reused / n, "requests_with_reuse": self.prompt_reused}


def rng(s):
    a, _, b = s.partition("-")
    return range(int(a), int(b or a) + 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", default="127.0.0.1:8000")
    ap.add_argument("--data", required=True)
    ap.add_argument("--items", default="100-149")
    ap.add_argument("--sc-items", default="100-119")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--deadline", type=float, default=1e9, help="stop starting items after it (s)")
    ap.add_argument("--passages", type=int, default=None, help="first N passages only")
    a = ap.parse_args()
    global PASSAGES
    PASSAGES = a.passages
    items = load_items(a.data)
    t0 = time.time()
    rag, sc = Tally(), {k: Tally() for k in ("s1_turn1", "s1_turn2", "s2_new_session")}
    sysm = {"role": "system", "content": SYSTEM}
    for i in rng(a.items):
        if time.time() - t0 > a.deadline:
            print("deadline: RAG stopped before item %d" % i)
            break
        it = items[i]
        d = docs_of(it)
        q = [sysm, {"role": "user", "content": "Question: " + it["question"]}]
        chat(a.serve, q, d[::-1], True, 1)  # stores the passages
        off, _ = chat(a.serve, q, d, False, a.max_tokens)
        on, kv = chat(a.serve, q, d, True, a.max_tokens)
        rag.add(off, on, golds_of(it), kv)
        print("rag %3d %s reused %5d | off %r | on %r" %
              (i, "agree " if off == on or normalize(off) == normalize(on) else "DIFFER",
               kv.get("reused_tokens", 0), off, on), flush=True)
    sci = list(rng(a.sc_items))
    for i in sci[::2]:
        if i + 1 >= len(items) or time.time() - t0 > a.deadline:
            break
        x, y = items[i], items[i + 1]
        ctx = docs_of(x) + docs_of(y)
        u1 = {"role": "user", "content": "Question: " + x["question"]}
        u2 = {"role": "user", "content": "Question: " + y["question"]}
        t1_off, _ = chat(a.serve, [sysm, u1], ctx, False, a.max_tokens)
        t1_on, kv1 = chat(a.serve, [sysm, u1], ctx, True, a.max_tokens)
        hist = [sysm, u1, {"role": "assistant", "content": t1_off}, u2]  # same history both ways
        t2_off, _ = chat(a.serve, hist, ctx, False, a.max_tokens)
        t2_on, kv2 = chat(a.serve, hist, ctx, True, a.max_tokens)
        s2_off, _ = chat(a.serve, [sysm, u2], ctx, False, a.max_tokens)
        s2_on, kv3 = chat(a.serve, [sysm, u2], ctx, True, a.max_tokens)
        sc["s1_turn1"].add(t1_off, t1_on, golds_of(x), kv1)
        sc["s1_turn2"].add(t2_off, t2_on, golds_of(y), kv2)
        sc["s2_new_session"].add(s2_off, s2_on, golds_of(y), kv3)
        print("sc %3d+%d reused %d/%d/%d | t1 %r/%r | t2 %r/%r | s2 %r/%r" %
              (i, i + 1, kv1.get("reused_tokens", 0), kv2.get("reused_tokens", 0),
               kv3.get("reused_tokens", 0), t1_off, t1_on, t2_off, t2_on, s2_off, s2_on),
              flush=True)
    rows = [rag.row("rag")] + [t.row(k) for k, t in sc.items()]
    print("%-16s %4s %9s %6s %7s %7s %8s %12s %8s" % ("workload", "n", "agreement", "exact",
                                                      "F1 off", "F1 on", "dF1 pts", "reused/req",
                                                      "w/reuse"))
    for r in rows:
        print("%-16s %4d %9.3f %6.3f %7.3f %7.3f %+8.2f %12.0f %8d" %
              (r["name"], r["n"], r["agreement"], r["exact"], r["f1_off"], r["f1_on"],
               r["f1_delta_points"], r["mean_reused_tokens"], r["requests_with_reuse"]))
    print(json.dumps({"bench": "serve-quality", "seconds": round(time.time() - t0, 1),
                      "rows": rows}))


if __name__ == "__main__":
    sys.exit(main())
