#!/usr/bin/env python3
"""bench/blend/agg_blend.py - add up kvs-bench-blend logs of one configuration run in pieces
(item ranges in parallel processes): from each log's last JSON line, or from its per-item lines
when the run was cut short (then first-token agreement and answer_equal are not known: -1).

  bench/blend/agg_blend.py LOG... [--select] [--json]

--select prints the strategy to ship by the rule fixed before the tuning run (issue 23):
among the strategies other than none and full whose answer agreement with the full prefill is
>= 0.95 and whose F1 is within 1 point of the full prefill's, the one that recomputes the fewest
tokens; if none qualifies, the one with the highest agreement (then the fewest recomputed)."""
import json
import re
import sys

ITEM = re.compile(r'^item +(\d+) \((\d+) tokens\) full: ".*" F1 ([\d.]+) ttft ([\d.]+)s')
ROW = re.compile(r'^   (\S+) +(agree |DIFFER) F1 ([\d.]+) KL ([\d.]+) recompute +([\d.]+)% ttft '
                 r'([\d.]+)s tf: KL ([\d.]+) top1 (\d+)/(\d+) \((\d+) near-ties\)')
KEYS = ("answer_agreement", "first_token_agreement", "f1", "f1_delta", "kl", "recompute_frac",
        "ttft_s", "answer_equal")


def from_json(j):
    n = j["n_items"]
    full = {"n": n, "f1": j["full"]["f1"] * n, "ttft_s": j["full"]["ttft_s"] * n}
    st = {}
    for name, s in j["strategies"].items():
        d = {k: s[k] * n for k in KEYS}
        d["n"] = n
        d["tf_kl"] = s["tf_kl"] * s["tf_positions"]
        d["tf_positions"] = s["tf_positions"]
        d["tf_agree"] = s["tf_top1"] * s["tf_checked"]
        d["tf_checked"] = s["tf_checked"]
        d["tf_dropped"] = s["tf_dropped"]
        st[name] = d
    return full, st


def from_lines(lines):
    full = {"n": 0, "f1": 0.0, "ttft_s": 0.0}
    st, f1_full = {}, 0.0
    for ln in lines:
        m = ITEM.match(ln)
        if m:
            f1_full = float(m.group(3))
            full["n"] += 1
            full["f1"] += f1_full
            full["ttft_s"] += float(m.group(4))
            continue
        m = ROW.match(ln)
        if not m:
            continue
        d = st.setdefault(m.group(1), {k: 0.0 for k in KEYS})
        d["n"] = d.get("n", 0) + 1
        d["answer_agreement"] += m.group(2) == "agree "
        d["f1"] += float(m.group(3))
        d["f1_delta"] += float(m.group(3)) - f1_full
        d["kl"] += float(m.group(4))
        d["recompute_frac"] += float(m.group(5)) / 100
        d["ttft_s"] += float(m.group(6))
        d["first_token_agreement"] = d["answer_equal"] = float("nan")
        # per-item tf KL is a mean over the item's positions: weight it by its checked + dropped
        pos = int(m.group(9)) + int(m.group(10))
        d["tf_kl"] = d.get("tf_kl", 0.0) + float(m.group(7)) * pos
        d["tf_positions"] = d.get("tf_positions", 0) + pos
        d["tf_agree"] = d.get("tf_agree", 0) + int(m.group(8))
        d["tf_checked"] = d.get("tf_checked", 0) + int(m.group(9))
        d["tf_dropped"] = d.get("tf_dropped", 0) + int(m.group(10))
    # an item cut short inside its strategy loop: keep only the rows of whole items
    return full, st


def merge(a, b):
    for k, v in b.items():
        a[k] = a.get(k, 0) + v


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    full, st, order = {}, {}, []
    for path in args:
        lines = open(path, errors="replace").read().splitlines()
        js = [ln for ln in lines if ln.startswith('{"bench":"blend"')]
        f, s = from_json(json.loads(js[-1])) if js else from_lines(lines)
        merge(full, f)
        for name, d in s.items():
            if name not in st:
                st[name] = {}
                order.append(name)
            merge(st[name], d)
    n = max(full.get("n", 0), 1)
    out = {"n_items": full.get("n", 0), "full": {"f1": full.get("f1", 0) / n,
                                                  "ttft_s": full.get("ttft_s", 0) / n},
           "strategies": {}}
    for name in order:
        d = st[name]
        k = max(d["n"], 1)
        out["strategies"][name] = {
            "n": d["n"], **{x: d[x] / k for x in KEYS},
            "f1_delta_points": 100 * d["f1_delta"] / k,
            "tf_kl": d["tf_kl"] / max(d["tf_positions"], 1),
            "tf_top1": d["tf_agree"] / max(d["tf_checked"], 1),
            "tf_checked": d["tf_checked"], "tf_dropped": d["tf_dropped"]}
    if "--select" in sys.argv:
        cand = [(s, v) for s, v in out["strategies"].items()
                if s.split(":")[0] not in ("none", "full")]
        ok = [(s, v) for s, v in cand
              if v["answer_agreement"] >= 0.95 and abs(v["f1_delta_points"]) <= 1.0]
        if not cand:
            return
        if ok:
            pick = min(ok, key=lambda x: (x[1]["recompute_frac"], -x[1]["answer_agreement"]))
        else:
            pick = max(cand, key=lambda x: (x[1]["answer_agreement"], -x[1]["recompute_frac"]))
        print(pick[0])
        return
    if "--json" in sys.argv:
        print(json.dumps(out))
        return
    print("items %d; full prefill F1 %.3f, TTFT %.1f ms" %
          (out["n_items"], out["full"]["f1"], 1e3 * out["full"]["ttft_s"]))
    print("%-14s %4s %9s %6s %6s %8s %8s %9s %8s %8s %8s %7s" %
          ("strategy", "n", "agreement", "tok1", "F1", "dF1 pts", "KL", "recompute", "ttft_ms",
           "tf_KL", "tf_top1", "dropped"))
    for s, v in out["strategies"].items():
        print("%-14s %4d %9.3f %6.3f %6.3f %+8.2f %8.4f %8.1f%% %8.1f %8.5f %8.4f %7d" %
              (s, v["n"], v["answer_agreement"], v["first_token_agreement"], v["f1"],
               v["f1_delta_points"], v["kl"], 100 * v["recompute_frac"], 1e3 * v["ttft_s"],
               v["tf_kl"], v["tf_top1"], v["tf_dropped"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
