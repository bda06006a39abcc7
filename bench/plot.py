#!/usr/bin/python3
"""Pictures of the headline figures, drawn from the benches' last-line JSON.

    bench/plot.py [--blend FILE] [--service FILE] [--codec FILE] [--out DIR]

Each FILE holds JSON lines as the benches print them last (a bench's whole
output works too: only the lines that parse as JSON objects of that bench are
used). Defaults: the files under bench/results/ (committed with the figures
they come from; see bench/RESULTS.md). Writes into DIR (default docs/img):

  ttft_vs_context.png   kvs-bench-blend --speed8b, one line per prompt size:
                        time to first token against context length, full
                        prefill vs each reuse strategy (KV in device memory)
  get_vs_redis.png      kvs-bench-service: GET requests/s of 1 MiB values
                        against clients, kvstashd's paths vs Redis (tcp, unix)
  size_vs_fidelity.png  kvs-bench-codec --real: next-token KL against
                        bits/element, per codec profile (KL 0.01 = parity line)

Needs matplotlib (Debian: python3-matplotlib). Each picture is drawn only
when its input is there; the script says which it wrote and which it skipped.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")


def json_lines(path, bench):
    """The JSON objects of `bench` in path (one per line; other lines skipped)."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict) and d.get("bench") == bench:
                out.append(d)
    return out


def plot_ttft(rows, dst, plt):
    rows = sorted(rows, key=lambda r: r["tokens"])
    x = [r["tokens"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [("full", "full prefill (no reuse)", "black", "o-"),
              ("none/dev", "reuse, no recompute", "tab:green", "s-"),
              ("epic/dev", "reuse + EPIC recompute", "tab:blue", "^-"),
              ("adaptive/dev", "reuse + adaptive recompute", "tab:orange", "D-"),
              ("cacheblend/dev", "reuse + CacheBlend 15%", "tab:red", "v-")]
    for key, label, color, style in series:
        ys = [r["ttft_ms"].get(key) for r in rows]
        if all(v is not None for v in ys):
            ax.plot(x, ys, style, color=color, label=label)
    for r in rows:
        full, best = r["ttft_ms"].get("full"), r["ttft_ms"].get("none/dev")
        if full and best:
            ax.annotate(f"{full / best:.1f}x", (r["tokens"], best), xytext=(4, -12),
                        textcoords="offset points", fontsize=8, color="tab:green")
    ax.set_xlabel("context tokens (passages + 32-token prefix + 64-token question)")
    ax.set_ylabel("time to first token (ms)")
    src = rows[0].get("source", "")
    ax.set_title("TTFT vs context, Llama-3-8B shape, H100" + ("\n" + src if src else ""),
                 fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    plt.close(fig)


def plot_service(d, dst, plt, size=1 << 20):
    rows = [r for r in d["rows"] if r["op"] == "get" and r["size"] == size and not r["errors"]]
    systems = [("kvs_shm", "kvstashd, same-host shm", "tab:green", "s-"),
               ("kvs_stream_tcp", "kvstashd, byte stream (tcp)", "tab:blue", "^-"),
               ("lib_default", "libkvstash default client", "tab:cyan", "D-"),
               ("kvs_tcp", "kvstashd, REQ/REP tcp", "tab:purple", "v-"),
               ("redis_tcp", "Redis tcp", "tab:red", "o--"),
               ("redis_unix", "Redis unix socket", "darkred", "o:")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for key, label, color, style in systems:
        pts = sorted((r["clients"], r["rps"]) for r in rows if r["system"] == key)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=label)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xscale("log", base=2)
    xs = sorted({r["clients"] for r in rows})
    ax.set_xticks(xs)
    ax.set_xticklabels([str(v) for v in xs])
    ax.set_xlabel("concurrent clients (one request each at a time)")
    ax.set_ylabel("GET requests / s (1 MiB values)")
    ax.set_title("GET vs Redis by clients (kvs-bench-service), 1 MiB values, %s s per cell\n%s"
                 % (d.get("seconds", "?"), d.get("note", "")), fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    plt.close(fig)
    return True


def plot_codec(d, dst, plt):
    real = [r for r in d.get("real") or [] if r.get("kl", 0) > 0]
    if not real:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in real:
        dense = r["profile"].startswith("dense")
        ax.scatter(r["bits_per_elem"], r["kl"], marker="o" if dense else "s",
                   color="tab:blue" if dense else "tab:red")
        ax.annotate(r["profile"], (r["bits_per_elem"], r["kl"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.axhline(0.01, color="gray", linestyle="--", linewidth=1)
    ax.text(ax.get_xlim()[1], 0.01, " parity (KL 0.01)", va="bottom", ha="right", fontsize=7,
            color="gray")
    ax.set_yscale("log")
    ax.set_xlabel("bits / element (fp16 = 16)")
    ax.set_ylabel("next-token KL vs fp16 KV")
    ax.set_title("Size vs fidelity per codec profile: real SmolLM2-135M KV, MuSiQue dev items\n"
                 + d.get("source", "kvs-bench-codec --real"), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blend", default=os.path.join(RESULTS, "blend_speed8b.jsonl"))
    ap.add_argument("--service", default=os.path.join(RESULTS, "service.jsonl"))
    ap.add_argument("--codec", default=os.path.join(RESULTS, "codec.jsonl"))
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "img"))
    a = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(a.out, exist_ok=True)
    wrote, skipped = [], []

    def have(path):
        return path and os.path.isfile(path)

    rows = json_lines(a.blend, "blend-speed8b") if have(a.blend) else []
    if rows:
        plot_ttft(rows, os.path.join(a.out, "ttft_vs_context.png"), plt)
        wrote.append("ttft_vs_context.png")
    else:
        skipped.append(f"ttft_vs_context.png (no blend-speed8b JSON in {a.blend})")
    svc = json_lines(a.service, "service") if have(a.service) else []
    if svc and plot_service(svc[-1], os.path.join(a.out, "get_vs_redis.png"), plt):
        wrote.append("get_vs_redis.png")
    else:
        skipped.append(f"get_vs_redis.png (no 1 MiB GET rows in {a.service})")
    cod = json_lines(a.codec, "codec") if have(a.codec) else []
    if cod and plot_codec(cod[-1], os.path.join(a.out, "size_vs_fidelity.png"), plt):
        wrote.append("size_vs_fidelity.png")
    else:
        skipped.append(f"size_vs_fidelity.png (no --real rows in {a.codec})")
    for w in wrote:
        print("wrote", os.path.join(a.out, w))
    for s in skipped:
        print("skipped", s)
    return 0 if wrote else 1


if __name__ == "__main__":
    sys.exit(main())
