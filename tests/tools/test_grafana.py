#!/usr/bin/env python3
"""docs/grafana-kvstash.json against a real kvstashd's /metrics: every metric
the dashboard's queries name exists in the exposition (histograms by their
_bucket/_sum/_count samples), and every label its queries group or filter by
is on that metric's samples. A name or label that drifts fails here.

  test_grafana.py DASHBOARD KVSTASHD KVSTASH_CLI
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exprs_of(dash):
    out = []
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            out.append((p.get("title", "?"), t.get("expr", ""), t.get("legendFormat", "")))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        out.append(("variable " + v.get("name", "?"), q.get("query", "") if isinstance(q, dict) else q or "", ""))
    return out


def parse_metrics(text):
    """{sample name: set of label names}, {family: type}."""
    samples, families = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(None, 3)
            families[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if not m:
            continue
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
        samples.setdefault(m.group(1), set()).update(labels)
    return samples, families


def problems(dash, samples, families):
    out = []
    for title, expr, legend in exprs_of(dash):
        names = set(re.findall(r"\bkvstash_[a-z0-9_]+", expr))
        if not names:
            out.append(f"{title}: a query without a kvstash metric: {expr!r}")
        labels_here = set()
        for n in names:
            if n in samples:
                labels_here |= samples[n]
            elif n in families:  # a family listed, no sample now
                pass
            else:
                out.append(f"{title}: {n} is not in /metrics")
        used = set()
        for g in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            used |= {x.strip() for x in g.split(",") if x.strip()}
        used |= set(re.findall(r"\{\{\s*([a-zA-Z_]+)\s*\}\}", legend))
        used |= set(re.findall(r"[{,]\s*([a-zA-Z_]+)\s*=~?\"", expr))
        used -= {"instance", "job", "le"}  # Prometheus adds instance/job; le is a bucket's
        if "le" in re.findall(r"\bby\s*\(([^)]*)\)", expr) and not any(n.endswith("_bucket") for n in names):
            out.append(f"{title}: groups by le without a _bucket series")
        for lab in sorted(used - labels_here):
            if names & set(samples):
                out.append(f"{title}: label {lab} is on none of {sorted(names)}")
    return out


def main():
    dash_path, kvstashd, cli = sys.argv[1:4]
    dash = json.load(open(dash_path))
    tmp = tempfile.mkdtemp(prefix="kvs-grafana-")
    port, http = free_port(), free_port()
    url = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    proc = subprocess.Popen([kvstashd, f"--listen={url}", f"--data_dir={tmp}/data",
                             f"--http=127.0.0.1:{http}"], env=env)
    try:
        text = None
        deadline = time.time() + 20
        while time.time() < deadline and proc.poll() is None:
            try:
                # traffic first, so that the latency histogram has samples
                subprocess.run([cli, "--url", url, "--http", f"127.0.0.1:{http}", "--config",
                                "/dev/null", "status"], env=env, stdout=subprocess.DEVNULL,
                               timeout=30, check=True)
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
                    text = r.read().decode()
                break
            except (OSError, subprocess.CalledProcessError):
                time.sleep(0.2)
        if text is None:
            print("FAIL: no /metrics from kvstashd")
            return 1
        samples, families = parse_metrics(text)
        bad = problems(dash, samples, families)
        # the check can fail: a name and a label that are not there are caught
        probe = {"panels": [{"title": "probe", "targets": [
            {"expr": "sum by (flavour) (rate(kvstash_no_such_metric_total[5m]))"},
            {"expr": "sum by (flavour) (kvstash_tier_bytes)"}]}]}
        caught = problems(probe, samples, families)
        if not any("kvstash_no_such_metric_total is not in /metrics" in c for c in caught) or \
                not any("label flavour is on none of ['kvstash_tier_bytes']" in c for c in caught):
            print("FAIL: the checker missed a bad name or label:", caught)
            return 1
        n = len(exprs_of(dash))
        names = sorted({m for _, e, _ in exprs_of(dash) for m in re.findall(r"\bkvstash_[a-z0-9_]+", e)})
        print(f"{len(dash.get('panels', []))} panels, {n} queries, {len(names)} metrics: {' '.join(names)}")
        for b in bad:
            print("FAIL:", b)
        return 1 if bad else 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
