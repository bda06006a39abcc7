"""Starts the server the Python client tests talk to, and stops it after.

It runs the kvstashd binary ($KVS_KVSTASHD) on a free loopback port with a
temporary data dir; the session exits 77 (ctest: skipped) when it is not
built."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_configure(config):
    b = os.environ.get("KVS_KVSTASHD", "")
    if not b or not os.access(b, os.X_OK):
        print("SKIP: the kvstashd binary is missing; build target kvstashd")
        pytest.exit("kvstashd missing", returncode=77)


@pytest.fixture(scope="session")
def server_url():
    import kvstash
    tmp = tempfile.mkdtemp(prefix="kvs-pyclient-")
    url = f"tcp://127.0.0.1:{_free_port()}"
    cmd = [os.environ["KVS_KVSTASHD"], f"--listen={url}", f"--data_dir={tmp}/data", "--http="]
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)  # the daemon is a plain executable
    proc = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.time() + 15
        while True:
            try:
                with kvstash.Client(url, connect_timeout_ms=500, timeout_ms=2000) as c:
                    c.ping()
                break
            except kvstash.Error:
                if time.time() > deadline or proc.poll() is not None:
                    raise
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
