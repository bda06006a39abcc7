"""The ctypes mirrors of the public structs against the library's own
kvs_abi_layout() (client/abi.c): they agree, and a mirror that drifted (the
16-byte kvs_put_opts of before, without `codec`) is caught by name."""
import ctypes

import pytest

import kvstash


def test_library_and_binding_agree():
    lib = kvstash.load_library()
    text = kvstash._abi_text(lib)
    lay = kvstash._parse_abi(text)
    assert kvstash._abi_diff(text) == []
    # every mirrored struct is reported, with its size as ctypes sees it
    for name, cls in kvstash._ABI_MIRRORS.items():
        assert lay[name][0] == ctypes.sizeof(cls), name
    size, fields = lay["kvs_put_opts"]
    assert fields["codec"] == (16, ctypes.sizeof(ctypes.c_void_p))
    assert size == 16 + ctypes.sizeof(ctypes.c_void_p)
    assert ctypes.sizeof(kvstash._PutOpts) == size


def test_abi_layout_truncates_and_reports_length():
    lib = kvstash.load_library()
    n = lib.kvs_abi_layout(None, 0)
    assert n == len(kvstash._abi_text(lib)) and n > 500
    small = ctypes.create_string_buffer(b"\xff" * 12)
    assert lib.kvs_abi_layout(small, 12) == n
    assert small.raw[:12] == kvstash._abi_text(lib).encode()[:11] + b"\0"


def test_drift_is_caught():
    text = kvstash._abi_text(kvstash.load_library())

    class OldPutOpts(ctypes.Structure):  # the mirror before this check existed
        _fields_ = [("profile", ctypes.c_uint32), ("layers_per_group", ctypes.c_uint32),
                    ("ttl_s", ctypes.c_uint32), ("flags", ctypes.c_uint32)]

    d = kvstash._abi_diff(text, {"kvs_put_opts": OldPutOpts})
    assert any("kvs_put_opts: 24 bytes in C, 16 in the binding" in x for x in d), d
    assert any(x.startswith("kvs_put_opts.codec: in C") for x in d), d

    class Swapped(ctypes.Structure):  # same size, two fields in the wrong order
        _fields_ = [("layers_per_group", ctypes.c_uint32), ("profile", ctypes.c_uint32),
                    ("ttl_s", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                    ("codec", ctypes.c_void_p)]

    d = kvstash._abi_diff(text, {"kvs_put_opts": Swapped})
    assert sorted(x.split(":")[0] for x in d) == ["kvs_put_opts.layers_per_group",
                                                 "kvs_put_opts.profile"]
    d = kvstash._abi_diff(text, {"kvs_no_such": Swapped})
    assert d == ["kvs_no_such: not reported by the library"]


def test_load_refuses_a_drifted_library(monkeypatch):
    lib = kvstash.load_library()
    good = kvstash._abi_text(lib)
    # the library as if kvs_get_opts had grown a field at its end
    bad = "\n".join(ln.replace("kvs_get_opts 48", "kvs_get_opts 56") + " extra@48:8"
                    if ln.startswith("kvs_get_opts ") else ln for ln in good.splitlines())
    monkeypatch.setattr(kvstash, "_abi_text", lambda _lib: bad)
    with pytest.raises(kvstash.AbiError) as e:
        kvstash._check_abi(lib, "libkvstash.so")
    assert "kvs_get_opts: 56 bytes in C, 48 in the binding" in str(e.value)
    assert "kvs_get_opts.extra: in C" in str(e.value)

    class NoAbi:  # a library from before kvs_abi_layout
        pass

    with pytest.raises(kvstash.AbiError, match="no kvs_abi_layout"):
        kvstash._check_abi(NoAbi(), "old.so")
