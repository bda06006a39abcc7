#!/usr/bin/env python3
"""bench/plot.py draws its PNGs from the benches' JSON: from the committed
bench/results/*.jsonl, and from a bench's whole output where only its last
JSON line counts; missing input is skipped by name, never a crash.

  test_plot.py SOURCE_DIR
"""
import json
import os
import subprocess
import sys
import tempfile


def run(src, *args):
    return subprocess.run([sys.executable, os.path.join(src, "bench", "plot.py"), *args],
                          capture_output=True, text=True, timeout=120)


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000


def main():
    src = sys.argv[1]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("SKIP: matplotlib is not installed (python3-matplotlib)")
        return 77
    fails = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "img")
        r = run(src, "--out", out)
        print(r.stdout, r.stderr)
        res = os.path.join(src, "bench", "results")
        want = {"ttft_vs_context.png": "blend_speed8b.jsonl", "get_vs_redis.png": "service.jsonl",
                "size_vs_fidelity.png": "codec.jsonl"}
        for png, js in want.items():
            if os.path.isfile(os.path.join(res, js)):
                if not (os.path.isfile(os.path.join(out, png)) and is_png(os.path.join(out, png))):
                    fails.append(f"{png} not drawn from {js}")
        if r.returncode != 0:
            fails.append(f"plot.py exit {r.returncode}")
        # a bench's whole output: text lines, then JSON; a 2-point blend file
        bo = os.path.join(tmp, "blend.out")
        with open(bo, "w") as f:
            f.write("kvs-bench-blend --speed8b: ...\nstrategy ttft_ms\n")
            for tok, full, none in ((4000, 100.0, 20.0), (8000, 220.0, 40.0)):
                f.write(json.dumps({"bench": "blend-speed8b", "tokens": tok, "ttft_ms":
                                    {"full": full, "none/dev": none}}) + "\n")
        out2 = os.path.join(tmp, "img2")
        r = run(src, "--blend", bo, "--service", os.path.join(tmp, "none.jsonl"),
                "--codec", bo, "--out", out2)
        print(r.stdout, r.stderr)
        if r.returncode != 0 or not is_png(os.path.join(out2, "ttft_vs_context.png")):
            fails.append("ttft_vs_context.png not drawn from a bench's whole output")
        if "skipped get_vs_redis.png" not in r.stdout or "skipped size_vs_fidelity.png" not in r.stdout:
            fails.append("missing inputs not reported as skipped")
        if os.path.exists(os.path.join(out2, "get_vs_redis.png")):
            fails.append("a picture drawn without its input")
        # nothing to draw at all: exit 1, no traceback
        r = run(src, "--blend", os.path.join(tmp, "x"), "--service", os.path.join(tmp, "x"),
                "--codec", os.path.join(tmp, "x"), "--out", os.path.join(tmp, "img3"))
        if r.returncode != 1 or "Traceback" in r.stderr:
            fails.append(f"no input: exit {r.returncode}, stderr {r.stderr[-200:]!r}")
    for f in fails:
        print("FAIL:", f)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
