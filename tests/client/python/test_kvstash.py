"""The Python binding end to end against a server (see conftest.py)."""
import contextlib
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

import kvstash

LAYOUT = kvstash.Layout(n_layers=4, n_kv_heads=2, head_dim=16, dtype="f16")
MODEL = kvstash.model_id_from_hex("0f" * 16)
RNG = np.random.default_rng(7)


def kv_of(n_tokens, layout=LAYOUT):
    return RNG.standard_normal(layout.shape(n_tokens)).astype(np.float16)


def _free_ports(n):
    """n distinct free loopback ports (a released port can come back from the next probe)."""
    ports = set()
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.add(s.getsockname()[1])
    return sorted(ports)


@contextlib.contextmanager
def _own_kvstashd(tmp_path, listen, *flags):
    """A kvstashd of this test's own (real mode only), up once it answers a PING on listen[0]."""
    if os.environ.get("KVS_CLIENT_SERVER", "real") != "real":
        pytest.skip("needs the real kvstashd")
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    proc = subprocess.Popen([os.environ["KVS_KVSTASHD"], "--listen=" + ",".join(listen),
                             f"--data_dir={tmp_path}/data", "--http=", *flags], env=env)
    try:
        deadline = time.time() + 15
        while True:
            try:
                with kvstash.Client(listen[0], connect_timeout_ms=500, timeout_ms=2000) as c:
                    c.ping()
                break
            except kvstash.Error:
                if time.time() > deadline or proc.poll() is not None:
                    raise
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


@pytest.fixture
def client(server_url):
    with kvstash.Client(server_url, tenant=f"py-{os.getpid()}", timeout_ms=20000) as c:
        yield c


def test_chunk_keys():
    toks = RNG.integers(0, 32000, 600).astype(np.int32)
    ch = kvstash.chunk_prefix(MODEL, toks, 256)
    assert [(c.start, c.n_tokens) for c in ch] == [(0, 256), (256, 256)]
    assert len(kvstash.chunk_prefix(MODEL, toks, 256, tail=True)) == 3
    # a passage's content key does not depend on where it sits
    other = np.concatenate([RNG.integers(0, 32000, 37).astype(np.int32), toks[100:180]])
    a = kvstash.chunk_spans(MODEL, toks, [(100, 80)])[0]
    b = kvstash.chunk_spans(MODEL, other, [(37, 80)])[0]
    assert a.key == b.key and a.start != b.start
    with pytest.raises(kvstash.Error) as e:
        kvstash.chunk_spans(MODEL, toks, [(590, 20)])
    assert e.value.name == "KVS_ERANGE"


def test_put_get_roundtrip(client):
    toks = RNG.integers(0, 32000, 50).astype(np.int32)
    ch = kvstash.chunk_spans(MODEL, toks, [(0, 50)])[0]
    kv = kv_of(50)
    client.put(MODEL, toks, ch, LAYOUT, kv)
    seen = []
    got = client.get(MODEL, toks, ch, LAYOUT, on_group=lambda lb, le: seen.append((lb, le)))
    assert got.dtype == np.float16 and got.shape == kv.shape
    assert np.array_equal(got.view(np.uint16), kv.view(np.uint16))
    assert seen[0][0] == 0 and seen[-1][1] == LAYOUT.n_layers
    # one KV head, as f32
    h1 = client.get(MODEL, toks, ch, LAYOUT, dtype="f32", heads=(1, 2))
    assert h1.shape == (4, 2, 50, 1, 16) and h1.dtype == np.float32
    assert np.array_equal(h1[:, :, :, 0, :], kv[:, :, :, 1, :].astype(np.float32))
    with pytest.raises(ValueError):
        client.put(MODEL, toks, ch, LAYOUT, kv.astype(np.float32))


def test_lookup_and_misses(client):
    toks = RNG.integers(0, 32000, 3 * 64).astype(np.int32)
    ch = kvstash.chunk_prefix(MODEL, toks, 64)
    client.put(MODEL, toks, ch[0], LAYOUT, kv_of(64))
    client.put(MODEL, toks, ch[2], LAYOUT, kv_of(64))
    st, n = client.lookup(MODEL, toks, ch, mode="each")
    assert list(st > 0) == [True, False, True] and n == 1
    st, n = client.lookup(MODEL, toks, ch, mode="prefix")
    assert n == 1 and not st[2]
    st, n = client.lookup(MODEL, toks, [])
    assert len(st) == 0 and n == 0
    with pytest.raises(kvstash.Error) as e:
        client.get(MODEL, toks, ch[1], LAYOUT)
    assert e.value.name == "KVS_ENOENT"
    bad = toks.copy()
    bad[ch[0].start + 3] += 1
    with pytest.raises(kvstash.Error) as e:
        client.get(MODEL, bad, ch[0], LAYOUT)
    assert e.value.name == "KVS_ETOKENS"


def test_batches(client):
    toks = RNG.integers(0, 32000, 4 * 32).astype(np.int32)
    ch = kvstash.chunk_prefix(MODEL, toks, 32)
    kvs = [kv_of(32) for _ in ch]
    assert list(client.put_batch(MODEL, toks, ch, LAYOUT, kvs)) == [0, 0, 0, 0]
    got = client.get_batch(MODEL, toks, ch, LAYOUT)
    assert all(np.array_equal(g.view(np.uint16), k.view(np.uint16)) for g, k in zip(got, kvs))
    missing = kvstash.Chunk(bytes(16), 0, 32, ch[0].kind)
    with pytest.raises(kvstash.Error) as e:
        client.get_batch(MODEL, toks, [ch[0], missing], LAYOUT)
    assert e.value.name == "KVS_ENOENT"


def test_key_ops(client):
    toks = RNG.integers(0, 32000, 20).astype(np.int32)
    ch = kvstash.chunk_spans(MODEL, toks, [(0, 20)])[0]
    assert not client.exists(MODEL, ch.key)["present"]
    client.put(MODEL, toks, ch, LAYOUT, kv_of(20))
    info = client.exists(MODEL, ch.key)
    assert info["present"] and info["value_bytes"] >= 4 * 2 * 20 * 2 * 16 * 2
    client.pin(ch.key)
    assert client.exists(MODEL, ch.key)["pinned"]
    client.unpin(ch.key)
    client.ttl(ch.key, 600)
    client.delete(ch.key)
    assert not client.exists(MODEL, ch.key)["present"]
    s = client.stats()
    assert s["puts"] >= 1 and "entries" in s
    assert "bytes_t0" not in s  # wire version 2: bytes per tier are the tier rows
    tiers = client.stats_tiers()
    assert [t["name"] for t in tiers[:2]] == ["ram", "disk"]
    assert [t["tier"] for t in tiers] == list(range(len(tiers)))
    assert tiers[1]["present"] and tiers[1]["capacity"] > 0 and tiers[1]["entries"] >= 0


@pytest.mark.skipif(not kvstash.has_codec(), reason="codec not built in")
def test_codec_profiles(client):
    toks = RNG.integers(0, 32000, 64).astype(np.int32)
    a, b = kvstash.chunk_spans(MODEL, toks, [(0, 32), (32, 32)])
    kv = kv_of(32)
    client.put(MODEL, toks, a, LAYOUT, kv, profile="lossless")
    client.put(MODEL, toks, b, LAYOUT, kv, profile="int8")
    assert np.array_equal(client.get(MODEL, toks, a, LAYOUT).view(np.uint16), kv.view(np.uint16))
    q = client.get(MODEL, toks, b, LAYOUT).astype(np.float32)
    ref = kv.astype(np.float32)
    rel = np.sum((q - ref) ** 2) / np.sum(ref ** 2)
    assert 0 < rel < 1e-3


def test_connect_failure():
    with pytest.raises(kvstash.Error) as e:
        kvstash.Client("ipc:///tmp/kvs-nobody-listens-here.sock", connect_timeout_ms=100)
    assert e.value.name == "KVS_ECONN" and "kvs-nobody" in e.value.message


def test_shm_option_and_counters(server_url):
    """shm=False never tries the shared-memory path; the counters say what a get did."""
    toks = RNG.integers(0, 32000, 30).astype(np.int32)
    ch = kvstash.chunk_spans(MODEL, toks, [(0, 30)])[0]
    kv = kv_of(30)
    with kvstash.Client(server_url, tenant=f"py-{os.getpid()}", shm=False) as c:
        assert not c.shm_enabled
        c.put(MODEL, toks, ch, LAYOUT, kv)
        assert np.array_equal(c.get(MODEL, toks, ch, LAYOUT), kv)
        k = c.counters()
        assert k["gets"] == 1 and k["leases"] == 0 and k["shm_fallbacks"] == 0
        assert k["sock_puts"] == 1 and k["shm_puts"] == 0
    with kvstash.Client(server_url, tenant=f"py-{os.getpid()}") as c:
        assert c.shm_enabled  # loopback tcp:// or ipc://; the server has shm off
        assert np.array_equal(c.get(MODEL, toks, ch, LAYOUT), kv)
        assert c.counters()["shm_fallbacks"] == 1 and not c.shm_enabled


def test_shm_get_real(tmp_path):
    """Against a kvstashd with shm on: the get is served in place and the lease released."""
    url = f"tcp://127.0.0.1:{_free_ports(1)[0]}"
    with _own_kvstashd(tmp_path, [url], "--shm=on", "--shm_bytes=4M"):
        toks = RNG.integers(0, 32000, 40).astype(np.int32)
        ch = kvstash.chunk_spans(MODEL, toks, [(0, 40)])[0]
        kv = kv_of(40)
        with kvstash.Client(url, tenant="pyshm") as c:
            c.put(MODEL, toks, ch, LAYOUT, kv)
            assert np.array_equal(c.get(MODEL, toks, ch, LAYOUT), kv)
            for _ in range(200):
                k = c.counters()
                if k["releases"] >= k["leases"]:
                    break
                time.sleep(0.01)
            assert k["shm_gets"] == 1 and k["leases"] == 1 and k["releases"] == 1
            assert k["shm_bytes"] > 0
            # the put wrote its bytes into the segment (PUT_RESERVE / PUT_COMMIT)
            assert k["shm_puts"] == 1 and k["sock_puts"] == 0 and k["shm_put_fallbacks"] == 0


def test_stream_get_real(tmp_path):
    """Gets through kvstashd's byte-stream listener: the same KV as through REQ/REP."""
    p1, p2 = _free_ports(2)
    url, surl = f"tcp://127.0.0.1:{p1}", f"tcp+stream://127.0.0.1:{p2}"
    with _own_kvstashd(tmp_path, [url, surl]):
        toks = RNG.integers(0, 32000, 48).astype(np.int32)
        ch = kvstash.chunk_spans(MODEL, toks, [(0, 48)])[0]
        kv = kv_of(48)
        with kvstash.Client(url, tenant="pystream", shm=False, stream=surl) as c:
            c.put(MODEL, toks, ch, LAYOUT, kv)
            assert np.array_equal(c.get(MODEL, toks, ch, LAYOUT), kv)
            k = c.counters()  # the get's requests went by the stream, none by REQ/REP
            assert k["stream_gets"] >= 2 and k["stream_fallbacks"] == 0
        with kvstash.Client(url, tenant="pystream", shm=False, stream="auto") as c:
            assert np.array_equal(c.get(MODEL, toks, ch, LAYOUT), kv)  # found by PING
            assert c.counters()["stream_gets"] >= 2
        for stream, want in ((None, True), (False, False)):  # by default, or opted out
            with kvstash.Client(url, tenant="pystream", shm=False, stream=stream) as c:
                assert np.array_equal(c.get(MODEL, toks, ch, LAYOUT), kv)
                assert (c.counters()["stream_gets"] >= 2) == want
        with pytest.raises(kvstash.Error):  # not a stream URL
            kvstash.Client(url, stream="tcp://127.0.0.1:1")
