#!/usr/bin/python3
"""Size-fidelity plot of kvs-bench-codec's JSON line (the last line of its output).

    kvs-bench-codec --real 20 | tail -1 > codec.json
    bench/codec/plot_codec.py codec.json codec.png

Left: real SmolLM2 KV, next-token KL (log) against bits/element, per profile, with the
parity line KL = 0.01. Right: synthetic KV, relative MSE against bits/element."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        d = json.loads(f.read().strip().splitlines()[-1])
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    real = [r for r in d.get("real", []) if r["kl"] > 0]
    for r in real:
        dense = r["profile"].startswith("dense")
        ax[0].scatter(r["bits_per_elem"], r["kl"], marker="o" if dense else "s",
                      color="tab:blue" if dense else "tab:red")
        ax[0].annotate(r["profile"], (r["bits_per_elem"], r["kl"]), fontsize=7,
                       xytext=(3, 3), textcoords="offset points")
    ax[0].axhline(0.01, color="gray", linestyle="--", linewidth=1)
    ax[0].set_yscale("log")
    ax[0].set_xlabel("bits / element")
    ax[0].set_ylabel("next-token KL vs fp16 KV")
    ax[0].set_title("real SmolLM2-135M KV (MuSiQue items 0..n-1)")
    syn = [r for r in d.get("synthetic", []) if "rel_mse" in r and r["rel_mse"] > 0]
    if syn:
        first = (syn[0]["shape"], syn[0]["tokens"])
        for r in syn:
            if (r["shape"], r["tokens"]) != first:
                continue
            dense = r["profile"].startswith("dense")
            ax[1].scatter(r["bits_per_elem"], r["rel_mse"], marker="o" if dense else "s",
                          color="tab:blue" if dense else "tab:red")
            ax[1].annotate(r["profile"], (r["bits_per_elem"], r["rel_mse"]), fontsize=7,
                           xytext=(3, 3), textcoords="offset points")
        ax[1].set_yscale("log")
        ax[1].set_xlabel("bits / element")
        ax[1].set_ylabel("relative MSE")
        ax[1].set_title("synthetic %s, %d tokens" % first)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main()
