"""The Python binding on a cluster URL (docs/cluster.md): a real etcd and two
real kvstashd nodes on loopback, started and stopped here (every wait
bounded); put/get/lookup/exists/delete through etcd://. Exits 77 (skip)
when no etcd binary is installed."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

import kvstash


def free_ports(n):
    ports = set()
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.add(s.getsockname()[1])
    return sorted(ports)


def wait_port(port, proc, secs=20):
    end = time.time() + secs
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError("process exited while starting")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("port %d did not open" % port)


def main():
    etcd = shutil.which("etcd") or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None)
    if not etcd:
        print("no etcd binary: skipped")
        return 77
    d = tempfile.mkdtemp(prefix="kvs-cluster-py-")
    procs = []
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    try:
        ep, pp, *node_ports = free_ports(6)
        procs.append(subprocess.Popen(
            [etcd, "--name", "p", "--data-dir", d + "/etcd",
             "--listen-client-urls", "http://127.0.0.1:%d" % ep,
             "--advertise-client-urls", "http://127.0.0.1:%d" % ep,
             "--listen-peer-urls", "http://127.0.0.1:%d" % pp,
             "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % pp,
             "--initial-cluster", "p=http://127.0.0.1:%d" % pp, "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=open(d + "/etcd.log", "w"), env=env))
        wait_port(ep, procs[0])
        url = "etcd://127.0.0.1:%d/py" % ep
        for i in range(2):
            port, http = node_ports[2 * i], node_ports[2 * i + 1]
            p = subprocess.Popen(
                [os.environ["KVS_KVSTASHD"], "--data_dir=%s/n%d" % (d, i),
                 "--listen=tcp://127.0.0.1:%d" % port, "--http=127.0.0.1:%d" % http,
                 "--cluster=" + url, "--cluster_node_id=p%d" % i, "--durability=async"],
                stdout=subprocess.DEVNULL, stderr=open("%s/n%d.log" % (d, i), "w"), env=env)
            procs.append(p)
            wait_port(port, p)
        lay = kvstash.Layout(n_layers=4, n_kv_heads=2, head_dim=16, dtype="f16")
        model = kvstash.model_id_from_hex("0f" * 16)
        c = kvstash.Client(url, tenant="pyt", timeout_ms=5000)
        for _ in range(300):  # a node in the client's view (15 s at most)
            try:
                c.ping()
                break
            except kvstash.Error:
                time.sleep(0.05)
        rng = np.random.default_rng(3)
        toks = list(range(1, 65))
        ch = kvstash.chunk_spans(model, toks, [(0, 64)])[0]
        kv = rng.standard_normal(lay.shape(64)).astype(np.float16)
        for _ in range(300):  # until both nodes registered: R = 2 copies
            c.put(model, toks, ch, lay, kv)
            if c.stats()["entries"] == 2:
                break
            time.sleep(0.05)
        assert c.stats()["entries"] == 2, c.stats()
        out = c.get(model, toks, ch, lay)
        assert np.array_equal(out, kv)
        st, n_prefix = c.lookup(model, toks, [ch])
        assert st[0] >= 1 and n_prefix == 1
        c.delete(ch.key)
        try:
            c.get(model, toks, ch, lay)
            raise AssertionError("deleted chunk still served")
        except kvstash.Error as e:
            assert "ENOENT" in str(e) or e.code == -4, e
        c.close()
        print("python etcd:// put/get/lookup/delete: ok")
        cli = os.environ.get("KVS_CLI")
        if cli:  # the CLI's cluster verbs on the same cluster
            def run(*args):
                r = subprocess.run([cli, "-u", url, "-t", "pyt", "--json", "cluster", *args],
                                   capture_output=True, text=True, timeout=60, env=env)
                assert r.returncode == 0, (args, r.returncode, r.stderr)
                return json.loads(r.stdout)
            nodes = run("nodes")
            assert sorted(n["id"] for n in nodes["nodes"]) == ["p0", "p1"], nodes
            assert all(n["connected"] for n in nodes["nodes"]) and nodes["replicas"] == 2
            ev = run("events")
            types = [e["type"] for page in ev["nodes"] for e in page["events"]]
            # the put loop above may write a node more than once before both are
            # registered (an overwrite is a removal and a store): what must hold is
            # that both copies were stored and each node's last word is the removal
            assert types.count("BlockStored") >= 2 and types.count("BlockRemoved") >= 2, types
            for page in ev["nodes"]:
                assert page["events"] and page["events"][-1]["type"] == "BlockRemoved", page
            reb = run("rebalance", "--rate", "0")
            assert reb["failed"] == 0, reb
            st = run("status")
            assert st["entries_total"] == 0, st
            print("kvstash cluster nodes/events/rebalance/status: ok")
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
