#!/usr/bin/env python3
"""bench/trace/plot.py OUT_DIR [OUT.svg] - the issue 21 plot from gpu_trace.sh's results.jsonl.

Four panels, written as a hand-made SVG (no plotting library needed), and the same as a PNG with
matplotlib where it is installed (on the build box: /usr/bin/python3 bench/trace/plot.py ...): (1) chat and (2) rag TTFT p50 / p99 in ms, no-reuse vs kvstash, with the speedups;
(3) the RAM-tier sweep: the RAM tier's hit rate (chunks kvs-serve found in RAM / looked up)
and prompt tokens reused, by RAM size (% of the working set) and eviction policy, with TTFT p50;
(4) where the time to first token went: mean ms per request of the queue wait and the server's
stages (lookup, gets, load wait, recompute, prefill, the rest), per workload and mode.
Default output: OUT_DIR/trace.svg."""
import json
import sys
from xml.sax.saxutils import escape

W, H = 1440, 400
COL = {"no-reuse": "#9e9e9e", "kvstash": "#1f77b4", "cost": "#1f77b4", "lru": "#ff7f0e"}


def load(out):
    rows = {}
    with open(out + "/results.jsonl") as f:
        for line in f:
            if line.strip():
                j = json.loads(line)
                rows[j["tag"]] = j
    return rows


class Svg:
    def __init__(self):
        self.p = []

    def rect(self, x, y, w, h, fill):
        self.p.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}"/>')

    def line(self, x1, y1, x2, y2, stroke="#000", width=1):
        self.p.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                      f'stroke="{stroke}" stroke-width="{width}"/>')

    def text(self, x, y, s, size=11, anchor="middle", weight="normal", fill="#000"):
        self.p.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                      f'font-family="sans-serif" font-weight="{weight}" fill="{fill}">{escape(s)}</text>')

    def out(self):
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
                f'viewBox="0 0 {W} {H}">\n<rect width="{W}" height="{H}" fill="#fff"/>\n'
                + "\n".join(self.p) + "\n</svg>\n")


def axes(g, x0, y0, w, h, vmax, unit, ticks=4):
    g.line(x0, y0 + h, x0 + w, y0 + h)
    g.line(x0, y0, x0, y0 + h)
    for i in range(ticks + 1):
        v = vmax * i / ticks
        y = y0 + h - h * i / ticks
        g.line(x0 - 3, y, x0, y)
        g.text(x0 - 5, y + 4, f"{v:.0f}" if vmax >= 10 else f"{v:.2f}", 9, "end")
    g.text(x0 - 34, y0 + h / 2, unit, 10, "middle")


def nice_max(v):
    if v <= 0:
        return 1
    return min(m * 10 ** e for m in (1, 2, 2.5, 5) for e in range(-3, 9) if m * 10 ** e >= v * 1.1)


def ttft_panel(g, x0, y0, w, h, j, title):
    g.text(x0 + w / 2, y0 - 22, title, 12, weight="bold")
    if not j or "kvstash" not in j or "no-reuse" not in j:
        g.text(x0 + w / 2, y0 + h / 2, "not measured", 11)
        return
    vals = {m: (j[m]["ttft_p50_ms"], j[m]["ttft_p99_ms"]) for m in ("no-reuse", "kvstash")}
    vmax = nice_max(max(max(v) for v in vals.values()))
    axes(g, x0, y0, w, h, vmax, "ms")
    groups = [("TTFT p50", 0), ("TTFT p99", 1)]
    gw = w / len(groups)
    for gi, (name, k) in enumerate(groups):
        bw = gw / 4
        for mi, m in enumerate(("no-reuse", "kvstash")):
            v = vals[m][k]
            bh = h * v / vmax
            x = x0 + gi * gw + bw * (0.8 + mi * 1.2)
            g.rect(x, y0 + h - bh, bw, bh, COL[m])
            g.text(x + bw / 2, y0 + h - bh - 3, f"{v:.0f}", 9)
        a, b = vals["kvstash"][k], vals["no-reuse"][k]
        g.text(x0 + gi * gw + gw / 2, y0 + h + 14, name, 10)
        g.text(x0 + gi * gw + gw / 2, y0 + h + 27, f"{b / a:.2f}x lower" if a > 0 else "-", 10,
               weight="bold")
    busy = j["no-reuse"].get("server_busy", 0)
    g.text(x0 + w / 2, y0 - 8, f"no-reuse server {100 * busy:.0f}% busy, rate {j.get('rate', 0):.3g}/s", 9)


def sweep_panel(g, x0, y0, w, h, rows):
    g.text(x0 + w / 2, y0 - 22, "rag: RAM tier size (% of working set) and eviction", 12,
           weight="bold")
    sw = [(tag, j) for tag, j in rows.items() if tag.startswith("rag-ram") and "kvstash" in j]
    if not sw:
        g.text(x0 + w / 2, y0 + h / 2, "not measured", 11)
        return
    sw.sort(key=lambda t: (t[1].get("ram_pct", 0), t[1].get("eviction", "")))
    axes(g, x0, y0, w, h, 1.0, "rate")
    gw = w / len(sw)
    for i, (tag, j) in enumerate(sw):
        a = j["kvstash"]
        ram_hit = a.get("ram_hit_rate") or 0
        tok = a.get("token_hit_rate") or 0
        bw = gw / 3.2
        x = x0 + i * gw + gw * 0.12
        ev = j.get("eviction", "cost")
        g.rect(x, y0 + h - h * ram_hit, bw, h * ram_hit, COL.get(ev, "#555"))
        g.text(x + bw / 2, y0 + h - h * ram_hit - 3, f"{ram_hit:.2f}", 9)
        g.rect(x + bw * 1.1, y0 + h - h * tok, bw, h * tok, "#2ca02c")
        g.text(x + bw * 1.6, y0 + h - h * tok - 3, f"{tok:.2f}", 9)
        g.text(x0 + i * gw + gw / 2, y0 + h + 14, f"{j.get('ram_pct', '?')}% {ev}", 10)
        g.text(x0 + i * gw + gw / 2, y0 + h + 27, f"p50 {a.get('ttft_p50_ms', 0):.0f} ms", 9)
    lx = x0 + 4
    for k, (lab, c) in enumerate([("RAM hit (cost)", COL["cost"]), ("RAM hit (lru)", COL["lru"]),
                                  ("tokens reused", "#2ca02c")]):
        g.rect(lx + k * 95, y0 + h + 36, 9, 9, c)
        g.text(lx + k * 95 + 12, y0 + h + 44, lab, 9, "start")


STAGE_COL = {"queue": "#d62728", "lookup": "#9467bd", "gets": "#8c564b", "load_wait": "#e377c2",
             "recompute": "#ff7f0e", "prefill": "#1f77b4", "other": "#bcbd22"}


def stage_panel(g, x0, y0, w, h, rows):
    """Mean ms per request by stage (queue wait + the server's TTFT path), per workload and mode."""
    g.text(x0 + w / 2, y0 - 22, "where the time to first token went (mean)", 12, weight="bold")
    bars = []
    for wl in ("chat", "rag"):
        j = rows.get(wl) or {}
        for m in ("no-reuse", "kvstash"):
            st = (j.get(m) or {}).get("stages_ms")
            if not st:
                continue
            v = {k: st.get(k, {}).get("mean", 0) for k in ("queue", "lookup", "gets", "load_wait",
                                                             "recompute", "prefill")}
            run = st.get("run", {}).get("mean", 0)
            tot = sum(st.get(k, {}).get("mean", 0) for k in ("seq", "lookup", "plan", "gets", "run",
                                                             "finish", "logits"))
            v["other"] = max(0.0, tot - v["lookup"] - v["gets"] - run) + max(
                0.0, run - v["load_wait"] - v["recompute"] - v["prefill"])
            bars.append((wl + " " + ("kvs" if m == "kvstash" else "none"), v))
    if not bars:
        g.text(x0 + w / 2, y0 + h / 2, "not measured", 11)
        return
    vmax = nice_max(max(sum(v.values()) for _, v in bars))
    axes(g, x0, y0, w, h, vmax, "ms")
    bw = w / len(bars)
    for i, (lab, v) in enumerate(bars):
        y = y0 + h
        for k in ("queue", "lookup", "gets", "load_wait", "recompute", "prefill", "other"):
            bh = h * v[k] / vmax
            g.rect(x0 + i * bw + bw * 0.2, y - bh, bw * 0.6, bh, STAGE_COL[k])
            y -= bh
        g.text(x0 + i * bw + bw / 2, y - 3, f"{sum(v.values()):.0f}", 9)
        g.text(x0 + i * bw + bw / 2, y0 + h + 14, lab, 9)
    for k, name in enumerate(STAGE_COL):
        g.rect(x0 + (k % 4) * 72, y0 + h + 24 + (k // 4) * 12, 8, 8, STAGE_COL[name])
        g.text(x0 + (k % 4) * 72 + 11, y0 + h + 32 + (k // 4) * 12, name, 8, "start")


def main():
    out = sys.argv[1]
    dst = sys.argv[2] if len(sys.argv) > 2 else out + "/trace.svg"
    rows = load(out)
    g = Svg()
    ttft_panel(g, 70, 60, 260, 260, rows.get("chat"), "chat: TTFT")
    ttft_panel(g, 420, 60, 260, 260, rows.get("rag"), "rag: TTFT")
    sweep_panel(g, 770, 60, 290, 260, rows)
    stage_panel(g, 1130, 60, 290, 260, rows)
    for k, (lab, c) in enumerate([("no-reuse", COL["no-reuse"]), ("kvstash", COL["kvstash"])]):
        g.rect(70 + k * 90, 372, 9, 9, c)
        g.text(82 + k * 90, 380, lab, 9, "start")
    g.text(W - 10, H - 6, "kvs-bench-trace via bench/trace/gpu_trace.sh; plot: bench/trace/plot.py",
           8, "end", fill="#555")
    with open(dst, "w") as f:
        f.write(g.out())
    print(dst)
    png = png_plot(rows, dst[:-4] + ".png" if dst.endswith(".svg") else dst + ".png")
    if png:
        print(png)


def png_plot(rows, dst):
    """The same four panels with matplotlib, when it is installed (here: /usr/bin/python3)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(1, 4, figsize=(17, 4.2))
    for a, wl in zip(ax[:2], ("chat", "rag")):
        j = rows.get(wl) or {}
        a.set_title(f"{wl}: TTFT (ms)")
        if "kvstash" in j and "no-reuse" in j:
            for i, m in enumerate(("no-reuse", "kvstash")):
                v = [j[m]["ttft_p50_ms"], j[m]["ttft_p99_ms"]]
                a.bar([x + 0.38 * i for x in (0, 1)], v, 0.38, label=m, color=COL[m])
            a.set_xticks([0.19, 1.19])
            a.set_xticklabels([f"p50 {j['no-reuse']['ttft_p50_ms'] / max(j['kvstash']['ttft_p50_ms'], 1e-9):.2f}x",
                               f"p99 {j['no-reuse']['ttft_p99_ms'] / max(j['kvstash']['ttft_p99_ms'], 1e-9):.2f}x"])
            a.legend(fontsize=8)
    sw = sorted(((t, j) for t, j in rows.items() if t.startswith("rag-ram") and "kvstash" in j),
                key=lambda t: (t[1].get("ram_pct", 0), t[1].get("eviction", "")))
    a = ax[2]
    a.set_title("rag: RAM hit rate by RAM size / eviction")
    if sw:
        xs = range(len(sw))
        a.bar([x - 0.2 for x in xs], [j["kvstash"].get("ram_hit_rate", 0) for _, j in sw], 0.4,
              color=[COL.get(j.get("eviction"), "#555") for _, j in sw], label="RAM hit")
        a.bar([x + 0.2 for x in xs], [j["kvstash"].get("token_hit_rate", 0) for _, j in sw], 0.4,
              color="#2ca02c", label="tokens reused")
        a.set_xticks(list(xs))
        a.set_xticklabels([f"{j.get('ram_pct')}% {j.get('eviction')}\n"
                           f"p50 {j['kvstash'].get('ttft_p50_ms', 0):.0f} ms" for _, j in sw],
                          fontsize=8)
        a.set_ylim(0, 1)
        a.legend(fontsize=8)
    a = ax[3]
    a.set_title("time to first token by stage (mean ms)")
    labels, bottoms = [], []
    for wl in ("chat", "rag"):
        for m in ("no-reuse", "kvstash"):
            st = ((rows.get(wl) or {}).get(m) or {}).get("stages_ms")
            if not st:
                continue
            x, b = len(labels), 0.0
            labels.append(f"{wl}\n{m}")
            for k in ("queue", "lookup", "gets", "load_wait", "recompute", "prefill"):
                v = st.get(k, {}).get("mean", 0)
                a.bar(x, v, 0.6, bottom=b, color=STAGE_COL[k], label=k if x == 0 else None)
                b += v
            bottoms.append(b)
    if labels:
        a.set_xticks(range(len(labels)))
        a.set_xticklabels(labels, fontsize=8)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    return dst


if __name__ == "__main__":
    main()
