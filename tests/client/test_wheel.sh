#!/usr/bin/env bash
# The Python package as a user gets it: `pip wheel ./client/python` builds a
# wheel carrying libkvstash (setup.py configures the repository and builds only
# the `kvstash` target, Release, CUDA off: about 45 s on 2 cores), pip installs
# it into a fresh venv, and from another directory, with no KVSTASH_LIB and no
# PYTHONPATH, `import kvstash` loads the library inside the package, reports
# the CMake project version, and puts and gets a chunk through a real kvstashd.
#   test_wheel.sh SOURCE_DIR KVSTASHD PROJECT_VERSION
# Offline: Debian's python3-setuptools, python3-wheel, python3-numpy.
set -euo pipefail
src=$1 kvstashd=$2 want_version=$3
tmp=$(mktemp -d /tmp/kvs-wheel-test.XXXXXX)
srv=""
cleanup() {
  [ -n "$srv" ] && kill "$srv" 2>/dev/null && wait "$srv" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
py=/usr/bin/python3
"$py" -m venv --system-site-packages "$tmp/venv" >/dev/null 2>&1 || {
  echo "python3 -m venv unavailable (python3-venv): skipped"; exit 77; }
# build from a copy of client/python so the checkout gets no build/ or egg-info
cp -r "$src/client/python" "$tmp/pysrc"
rm -rf "$tmp/pysrc/build" "$tmp/pysrc/kvstash.egg-info"
unset LD_PRELOAD KVSTASH_LIB PYTHONPATH
KVSTASH_SOURCE_DIR=$src KVSTASH_CMAKE_ARGS="-DKVS_CUDA=OFF" \
  "$tmp/venv/bin/pip" wheel -q --no-build-isolation --no-index --no-deps "$tmp/pysrc" -w "$tmp/dist" \
  >"$tmp/wheel.log" 2>&1 || { tail -40 "$tmp/wheel.log"; exit 1; }
whl=$(ls "$tmp"/dist/kvstash-*.whl)
echo "built $(basename "$whl")"
case $(basename "$whl") in
  kvstash-"$want_version"-py3-none-linux_*.whl) ;;
  *) echo "wheel name: expected kvstash-$want_version-py3-none-linux_*"; exit 1 ;;
esac
"$py" -m zipfile -l "$whl" | grep 'kvstash/libkvstash.so' >/dev/null || { echo "no libkvstash.so in the wheel"; exit 1; }
"$tmp/venv/bin/pip" install -q --no-index --no-deps "$whl"
rm -rf "$tmp/pysrc" # nothing of the source is left to fall back on

port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="tcp://127.0.0.1:$port"
"$kvstashd" --listen="$url" --data_dir="$tmp/data" --http= >"$tmp/kvstashd.log" 2>&1 &
srv=$!
mkdir -p "$tmp/elsewhere"
cd "$tmp/elsewhere"
KVS_URL=$url WANT=$want_version VENV=$tmp/venv "$tmp/venv/bin/python" - <<'PY'
import os, time
import numpy as np
import kvstash
lib = kvstash.load_library()._name
print("kvstash", kvstash.__version__, "from", kvstash.__file__, "library", lib)
assert kvstash.__file__.startswith(os.environ["VENV"]), kvstash.__file__
assert lib == os.path.join(os.path.dirname(kvstash.__file__), "libkvstash.so"), lib
assert kvstash.__version__ == os.environ["WANT"], kvstash.__version__
assert kvstash.library_version().split()[0] == os.environ["WANT"], kvstash.library_version()
deadline = time.time() + 20
while True:  # bounded: kvstashd is up in well under a second
    try:
        c = kvstash.Client(os.environ["KVS_URL"], tenant="wheel", connect_timeout_ms=500)
        c.ping()
        break
    except kvstash.Error:
        if time.time() > deadline:
            raise
        time.sleep(0.1)
with c:
    lay = kvstash.Layout(n_layers=2, n_kv_heads=2, head_dim=8)
    model = kvstash.model_id_from_hex("ab" * 16)
    toks = np.arange(40, dtype=np.int32)
    ch = kvstash.chunk_spans(model, toks, [(0, 40)])[0]
    kv = np.random.default_rng(1).standard_normal(lay.shape(40)).astype(np.float16)
    c.put(model, toks, ch, lay, kv, profile="int8" if kvstash.has_codec() else "raw")
    got = c.get(model, toks, ch, lay)
    assert got.shape == kv.shape
    err = float(np.abs(got.astype(np.float32) - kv.astype(np.float32)).max())
    assert err < 0.1, err
    print("put/get through kvstashd from the wheel: ok, max |err|", err)
PY
echo "wheel test: ok"
