"""kvstash - Python binding of libkvstash (ctypes), numpy in and out.

KV arrays use the canonical chunk layout of kvstash: shape
(n_layers, 2, n_tokens, n_kv_heads, head_dim) - per layer K then V - with
dtype float16 (layout dtype "f16"), uint16 holding bf16 bits ("bf16"), or
float32 (get only). Token ids are int32 arrays.
"""
import ctypes
import ctypes.util
import os

import numpy as np

__all__ = [
    "Error", "Client", "Layout", "Chunk", "model_id_from_hex", "model_id_from_bytes",
    "chunk_prefix", "chunk_spans", "profile_from_name", "has_codec", "load_library", "AbiError",
    "library_version", "__version__", "model_id",
]



def _read_version():
    """The CMake project version: written into _version.py by setup.py, or
    read from the repository's CMakeLists.txt when run from a checkout."""
    try:
        from ._version import version
        return version
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        with open(os.path.join(here, "..", "..", "..", "CMakeLists.txt")) as f:
            import re
            m = re.search(r"project\(kvstash\s+VERSION\s+([0-9.]+)", f.read())
            if m:
                return m.group(1)
    except OSError:
        pass
    return "0+unknown"


__version__ = _read_version()

# ---------------------------------------------------------------- library
_LIB = None


def _candidates():
    env = os.environ.get("KVSTASH_LIB")
    if env:
        yield env
    # the library a wheel / `pip install` carries (client/python/setup.py)
    own = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libkvstash.so")
    if os.path.isfile(own):
        yield own
    found = ctypes.util.find_library("kvstash")
    if found:
        yield found
    here = os.path.dirname(os.path.abspath(__file__))
    for up in (os.path.join(here, "..", "..", ".."), os.getcwd()):
        for sub in ("build/release/client", "build/test/client", "build/dev/client"):
            yield os.path.join(up, sub, "libkvstash.so")
    yield "libkvstash.so"


def load_library(path=None):
    """Loads libkvstash (once). path overrides the search."""
    global _LIB
    if _LIB is not None and path is None:
        return _LIB
    errors = []
    for cand in ([path] if path else _candidates()):
        try:
            lib = ctypes.CDLL(cand)
        except OSError as e:
            errors.append(f"{cand}: {e}")
            continue
        _check_abi(lib, cand)
        _declare(lib)
        _LIB = lib
        return lib
    raise OSError("libkvstash.so not found; set KVSTASH_LIB. Tried:\n  " + "\n  ".join(errors))


class _Hash(ctypes.Structure):
    _fields_ = [("b", ctypes.c_uint8 * 16)]


class _Layout(ctypes.Structure):
    _fields_ = [("n_layers", ctypes.c_uint32), ("n_kv_heads", ctypes.c_uint32),
                ("head_dim", ctypes.c_uint32), ("dtype", ctypes.c_uint32),
                ("rope_type", ctypes.c_uint32), ("rope_dims", ctypes.c_uint32),
                ("rope_theta", ctypes.c_float), ("rope_freq_scale", ctypes.c_float),
                ("rope_scaling", ctypes.c_uint32), ("rope_orig_ctx", ctypes.c_float),
                ("rope_scale_a", ctypes.c_float), ("rope_scale_b", ctypes.c_float)]


class _Chunk(ctypes.Structure):
    _fields_ = [("key", _Hash), ("start", ctypes.c_uint32), ("n_tokens", ctypes.c_uint32),
                ("kind", ctypes.c_uint32)]


class _Span(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint32), ("n_tokens", ctypes.c_uint32)]


class _ClientOpts(ctypes.Structure):
    _fields_ = [("url", ctypes.c_char_p), ("tenant", ctypes.c_char_p), ("token", ctypes.c_char_p),
                ("connect_timeout_ms", ctypes.c_uint32), ("request_timeout_ms", ctypes.c_uint32),
                ("n_sockets", ctypes.c_uint32), ("max_retries", ctypes.c_uint32),
                ("retry_backoff_ms", ctypes.c_uint32), ("max_msg_bytes", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("tls_ca_file", ctypes.c_char_p),
                ("tls_server_name", ctypes.c_char_p), ("tls_cert_key_file", ctypes.c_char_p),
                ("n_workers", ctypes.c_uint32)]


class _Counters(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "gets", "shm_gets", "shm_fallbacks", "shm_regroups", "shm_bytes", "leases", "releases",
        "release_lost", "shm_maps", "stream_gets", "stream_fallbacks", "shm_puts", "sock_puts",
        "shm_put_fallbacks")]


class _PutOpts(ctypes.Structure):
    _fields_ = [("profile", ctypes.c_uint32), ("layers_per_group", ctypes.c_uint32),
                ("ttl_s", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("codec", ctypes.c_void_p)]  # const struct kvs_codec_params * (NULL: defaults)


_GROUP_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32)


class _GetOpts(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_uint32), ("head_begin", ctypes.c_uint32),
                ("head_end", ctypes.c_uint32), ("window", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("on_group", _GROUP_FN), ("user", ctypes.c_void_p),
                ("paged", ctypes.c_void_p)]


class _ModelDesc(ctypes.Structure):
    _fields_ = [("arch", ctypes.c_char_p), ("layout", _Layout), ("n_embd", ctypes.c_uint32),
                ("n_heads", ctypes.c_uint32), ("n_ff", ctypes.c_uint32),
                ("n_vocab", ctypes.c_uint32), ("norm_eps", ctypes.c_float), ("weights", _Hash)]


class _EntryInfo(ctypes.Structure):
    _fields_ = [("present", ctypes.c_int), ("tier", ctypes.c_int), ("pinned", ctypes.c_int),
                ("value_bytes", ctypes.c_uint64)]


class _TierStat(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * 16), ("tier", ctypes.c_uint), ("present", ctypes.c_int),
                ("used", ctypes.c_uint64), ("capacity", ctypes.c_uint64),
                ("entries", ctypes.c_uint64)]


# The C struct each ctypes mirror stands for: checked against the library's
# own kvs_abi_layout() when it is loaded (sizes, and every field's offset and
# size both ways), so a field added on one side only fails at load with the
# difference named, instead of C reading or writing past a Python object.
_ABI_MIRRORS = {
    "kvs_hash128": _Hash, "kvs_layout": _Layout, "kvs_chunk": _Chunk, "kvs_span": _Span,
    "kvs_client_opts": _ClientOpts, "kvs_client_counters": _Counters,
    "kvs_entry_info": _EntryInfo, "kvs_put_opts": _PutOpts, "kvs_get_opts": _GetOpts,
    "kvs_model_desc": _ModelDesc, "kvs_tier_stat": _TierStat,
}


class AbiError(ImportError):
    """The loaded libkvstash lays out a public struct differently from this binding."""


def _parse_abi(text):
    """kvs_abi_layout()'s text -> {struct: (size, {field: (offset, size)})}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        fields = {}
        for f in parts[2:]:
            name, _, rest = f.partition("@")
            off, _, size = rest.partition(":")
            fields[name] = (int(off), int(size))
        out[parts[0]] = (int(parts[1]), fields)
    return out


def _abi_diff(text, mirrors=None):
    """The differences between the library's layouts (text) and the ctypes
    mirrors, one string each; [] when they agree."""
    mirrors = _ABI_MIRRORS if mirrors is None else mirrors
    lay = _parse_abi(text)
    diffs = []
    for cname, cls in mirrors.items():
        if cname not in lay:
            diffs.append(f"{cname}: not reported by the library")
            continue
        size, cfields = lay[cname]
        if ctypes.sizeof(cls) != size:
            diffs.append(f"{cname}: {size} bytes in C, {ctypes.sizeof(cls)} in the binding")
        pyfields = {n: (getattr(cls, n).offset, getattr(cls, n).size) for n, *_ in cls._fields_}
        for n, (off, fs) in cfields.items():
            if n not in pyfields:
                diffs.append(f"{cname}.{n}: in C (offset {off}, {fs} bytes), not in the binding")
            elif pyfields[n] != (off, fs):
                diffs.append(f"{cname}.{n}: offset {off} size {fs} in C, offset {pyfields[n][0]} "
                             f"size {pyfields[n][1]} in the binding")
        for n in pyfields:
            if n not in cfields:
                diffs.append(f"{cname}.{n}: in the binding, not in C")
    return diffs


def _abi_text(lib):
    f = lib.kvs_abi_layout
    f.restype, f.argtypes = ctypes.c_size_t, [ctypes.c_char_p, ctypes.c_size_t]
    n = f(None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    f(buf, n + 1)
    return buf.value.decode()


def _check_abi(lib, where):
    if not hasattr(lib, "kvs_abi_layout"):
        raise AbiError(f"{where} has no kvs_abi_layout(): a libkvstash older than this binding")
    diffs = _abi_diff(_abi_text(lib))
    if diffs:
        raise AbiError(f"{where} and this binding (kvstash/__init__.py) lay out the public "
                       "structs differently:\n  " + "\n  ".join(diffs))


def _declare(lib):
    P, u32, u64, i32p = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_void_p
    sz = ctypes.c_size_t
    sigs = {
        "kvs_strerror": (ctypes.c_char_p, [ctypes.c_int]),
        "kvs_errname": (ctypes.c_char_p, [ctypes.c_int]),
        "kvs_client_version": (ctypes.c_char_p, []),
        "kvs_client_opts_init": (None, [ctypes.POINTER(_ClientOpts)]),
        "kvs_client_create": (ctypes.c_int, [ctypes.POINTER(_ClientOpts), ctypes.POINTER(P)]),
        "kvs_client_free": (None, [P]),
        "kvs_client_errmsg": (ctypes.c_char_p, [P]),
        "kvs_client_connected": (ctypes.c_int, [P]),
        "kvs_client_get_counters": (ctypes.c_int, [P, ctypes.POINTER(_Counters)]),
        "kvs_client_shm_enabled": (ctypes.c_int, [P]),
        "kvs_client_stream": (ctypes.c_int, [P, ctypes.c_char_p]),
        "kvs_hash128_from_hex": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(_Hash)]),
        "kvs_chunk_prefix_count": (sz, [sz, u32, ctypes.c_uint]),
        "kvs_chunk_prefix": (ctypes.c_int, [ctypes.POINTER(_Hash), i32p, sz, u32, ctypes.c_uint,
                                            P, sz, ctypes.POINTER(sz)]),
        "kvs_chunk_spans": (ctypes.c_int, [ctypes.POINTER(_Hash), i32p, sz, P, sz, P]),
        "kvs_ping": (ctypes.c_int, [P]),
        "kvs_exists": (ctypes.c_int, [P, ctypes.POINTER(_Hash), ctypes.POINTER(_Hash),
                                      ctypes.POINTER(_EntryInfo)]),
        "kvs_delete": (ctypes.c_int, [P, ctypes.POINTER(_Hash)]),
        "kvs_pin": (ctypes.c_int, [P, ctypes.POINTER(_Hash)]),
        "kvs_unpin": (ctypes.c_int, [P, ctypes.POINTER(_Hash)]),
        "kvs_ttl": (ctypes.c_int, [P, ctypes.POINTER(_Hash), u32]),
        "kvs_stats": (ctypes.c_int, [P, P, sz, ctypes.POINTER(sz)]),
        "kvs_stat_name": (ctypes.c_char_p, [u32]),
        "kvs_stats_tiers": (ctypes.c_int, [P, ctypes.POINTER(_TierStat), sz, ctypes.POINTER(sz)]),
        "kvs_lookup": (ctypes.c_int, [P, ctypes.POINTER(_Hash), i32p, sz, P, sz, u32, P,
                                      ctypes.POINTER(sz)]),
        "kvs_profile_from_name": (ctypes.c_int, [ctypes.c_char_p]),
        "kvs_client_has_codec": (ctypes.c_int, []),
        "kvs_put": (ctypes.c_int, [P, ctypes.POINTER(_Hash), i32p, ctypes.POINTER(_Chunk),
                                   ctypes.POINTER(_Layout), P, ctypes.POINTER(_PutOpts)]),
        "kvs_get_bound": (u64, [ctypes.POINTER(_Layout), u32, ctypes.POINTER(_GetOpts)]),
        "kvs_get": (ctypes.c_int, [P, ctypes.POINTER(_Hash), i32p, ctypes.POINTER(_Chunk),
                                   ctypes.POINTER(_Layout), P, u64, ctypes.POINTER(_GetOpts)]),
        "kvs_get_batch": (ctypes.c_int, [P, ctypes.POINTER(_Hash), i32p, P, sz,
                                         ctypes.POINTER(_Layout), P, P, ctypes.POINTER(_GetOpts), P]),
        "kvs_put_batch": (ctypes.c_int, [P, ctypes.POINTER(_Hash), i32p, P, sz,
                                         ctypes.POINTER(_Layout), P, ctypes.POINTER(_PutOpts), P]),
        "kvs_model_id_compute": (ctypes.c_int, [ctypes.POINTER(_ModelDesc), ctypes.POINTER(_Hash)]),
        "kvs_hasher_create": (P, []),
        "kvs_hasher_update": (None, [P, ctypes.c_char_p, sz]),
        "kvs_hasher_digest": (_Hash, [P]),
        "kvs_hasher_free": (None, [P]),
    }
    for name, (res, args) in sigs.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args


def library_version():
    """The loaded libkvstash's version (kvs_client_version())."""
    return load_library().kvs_client_version().decode()


# ---------------------------------------------------------------- values
class Error(Exception):
    """A kvs_err: .code (negative int), .name ("KVS_ENOENT"), .message."""

    def __init__(self, code, message=""):
        lib = load_library()
        self.code = code
        self.name = lib.kvs_errname(code).decode()
        self.message = message or lib.kvs_strerror(code).decode()
        super().__init__(f"{self.name}: {self.message}")


_DTYPES = {"f16": (1, np.float16), "bf16": (2, np.uint16), "f32": (3, np.float32)}


class Layout:
    """What one token's KV looks like (kvs_layout)."""

    def __init__(self, n_layers, n_kv_heads, head_dim, dtype="f16", rope_theta=10000.0,
                 rope_dims=None, rope_type=0, rope_freq_scale=1.0):
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.dtype = dtype
        self.rope_theta, self.rope_type, self.rope_freq_scale = rope_theta, rope_type, rope_freq_scale
        self.rope_dims = head_dim if rope_dims is None else rope_dims

    def _c(self):
        return _Layout(self.n_layers, self.n_kv_heads, self.head_dim, _DTYPES[self.dtype][0],
                       self.rope_type, self.rope_dims, self.rope_theta, self.rope_freq_scale)

    def shape(self, n_tokens, heads=None):
        h = self.n_kv_heads if heads is None else heads[1] - heads[0]
        return (self.n_layers, 2, n_tokens, h, self.head_dim)


class Chunk:
    """A chunk of a token sequence: tokens[start:start+n_tokens] under `key` (16 bytes)."""

    __slots__ = ("key", "start", "n_tokens", "kind")

    def __init__(self, key, start, n_tokens, kind):
        self.key, self.start, self.n_tokens, self.kind = bytes(key), start, n_tokens, kind

    def __repr__(self):
        k = "prefix" if self.kind == 1 else "content"
        return f"Chunk({k}, start={self.start}, n={self.n_tokens}, key={self.key.hex()})"

    def _c(self):
        c = _Chunk()
        c.key.b[:] = self.key
        c.start, c.n_tokens, c.kind = self.start, self.n_tokens, self.kind
        return c

    @staticmethod
    def _from_c(c):
        return Chunk(bytes(c.key.b), c.start, c.n_tokens, c.kind)


def _hash(b):
    h = _Hash()
    h.b[:] = bytes(b)
    return h


def model_id_from_bytes(b):
    """A 16-byte model fingerprint (as kvs_model_id_compute makes it)."""
    if len(b) != 16:
        raise ValueError("a model id is 16 bytes")
    return bytes(b)


def model_id_from_hex(s):
    return model_id_from_bytes(bytes.fromhex(s))


def _tokens(tokens):
    t = np.ascontiguousarray(tokens, dtype=np.int32)
    if t.ndim != 1:
        raise ValueError("tokens must be 1-D")
    return t


def _check(rv, client=None):
    if rv < 0:
        msg = ""
        if client is not None:
            msg = load_library().kvs_client_errmsg(client).decode(errors="replace")
        raise Error(rv, msg)
    return rv


def chunk_prefix(model, tokens, chunk_tokens=256, tail=False):
    """Multi-turn: fixed-size chunks chained as a hash list (keys as the server computes)."""
    lib = load_library()
    t = _tokens(tokens)
    flags = 1 if tail else 0
    n = lib.kvs_chunk_prefix_count(len(t), chunk_tokens, flags)
    arr = (_Chunk * max(n, 1))()
    got = ctypes.c_size_t()
    _check(lib.kvs_chunk_prefix(_hash(model), t.ctypes.data, len(t), chunk_tokens, flags, arr,
                                n, ctypes.byref(got)))
    return [Chunk._from_c(arr[i]) for i in range(got.value)]


def chunk_spans(model, tokens, spans):
    """RAG: one position-independent content chunk per (start, n_tokens) span."""
    lib = load_library()
    t = _tokens(tokens)
    sp = (_Span * max(len(spans), 1))(*[_Span(int(a), int(b)) for a, b in spans])
    arr = (_Chunk * max(len(spans), 1))()
    _check(lib.kvs_chunk_spans(_hash(model), t.ctypes.data, len(t), sp, len(spans), arr))
    return [Chunk._from_c(arr[i]) for i in range(len(spans))]


def profile_from_name(name):
    """Profile id of "raw", "lossless", "int8", ... (ValueError when unknown / not built in)."""
    p = load_library().kvs_profile_from_name(name.encode())
    if p < 0:
        raise ValueError(f"unknown codec profile {name!r} (or codec not built in)")
    return p


def has_codec():
    return bool(load_library().kvs_client_has_codec())


# ------------------------------------------------------------- model ids
def model_id(arch, layout, n_embd, n_heads, n_ff, n_vocab, norm_eps, weights):
    """The model fingerprint (16 bytes) that keys a KV cache, as libkvstash's
    kvs_model_id_compute makes it: the architecture, the KV layout (RoPE
    included), the shape numbers that change KV without showing in the layout,
    and the content hash of the weights. Two engines or models share cached KV
    only when every one of these is equal; an id made up by hand (say
    model_id_from_hex("00" * 16)) lets one model's entries answer another's
    lookups, so make ids here.

    arch: the architecture name, plus whatever else changes the KV's numbers
      (engine and its version, attention kernel, quantization): e.g.
      "llama|vllm-0.6|fa2". layout: a Layout.
    weights: the weights' content: a file path (hashed whole, XXH3-128, as the
      reference engine and the llama.cpp adapter hash a GGUF), a directory
      (every regular file under it, in sorted relative-path order, each as its
      path, a NUL and its bytes), or a 16-byte hash computed elsewhere."""
    lib = load_library()
    if isinstance(weights, (bytes, bytearray, memoryview)):
        if len(weights) != 16:
            raise ValueError("weights: a path, or a 16-byte content hash")
        wh = _hash(weights)
    else:
        wh = _hash_weights(lib, os.fspath(weights))
    d = _ModelDesc()
    d.arch = arch.encode() if isinstance(arch, str) else bytes(arch)
    d.layout = layout._c()
    d.n_embd, d.n_heads, d.n_ff, d.n_vocab = int(n_embd), int(n_heads), int(n_ff), int(n_vocab)
    d.norm_eps = float(norm_eps)
    d.weights = wh
    out = _Hash()
    _check(lib.kvs_model_id_compute(ctypes.byref(d), ctypes.byref(out)))
    return bytes(out.b)


def _hash_weights(lib, path):
    if os.path.isdir(path):
        files = []
        for root, _, names in os.walk(path):
            for n in names:
                full = os.path.join(root, n)
                if os.path.isfile(full):
                    files.append((os.path.relpath(full, path).replace(os.sep, "/"), full))
        files.sort()
        if not files:
            raise ValueError(f"weights: no files under {path}")
    elif os.path.isfile(path):
        files = [(None, path)]
    else:
        raise FileNotFoundError(f"weights: {path} is not a file or directory")
    h = lib.kvs_hasher_create()
    if not h:
        raise MemoryError("kvs_hasher_create")
    try:
        for rel, full in files:
            if rel is not None:
                name = rel.encode() + b"\0"
                lib.kvs_hasher_update(h, name, len(name))
            with open(full, "rb") as f:
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    lib.kvs_hasher_update(h, b, len(b))
        return lib.kvs_hasher_digest(h)
    finally:
        lib.kvs_hasher_free(h)


# ------------------------------------------------ arrays and tensors in/out
# Element codes as in kvs_layout.dtype: 1 f16, 2 bf16, 3 f32.
_CODE_NAME = {1: "f16", 2: "bf16", 3: "f32"}


def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "data_ptr")


def _torch_code(t):
    import torch
    return {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.int16: 2}.get(t.dtype)


def _torch_dtype(code):
    import torch
    return {1: torch.float16, 2: torch.bfloat16, 3: torch.float32}[code]


class _Buf:
    """Memory handed to C: pointer, bytes, whether it is CUDA device memory
    (and which device), and what must stay alive meanwhile."""

    __slots__ = ("ptr", "nbytes", "device", "dev_index", "keep", "torch_dev")

    def __init__(self, ptr, nbytes, device=False, dev_index=0, keep=None, torch_dev=None):
        self.ptr, self.nbytes, self.device, self.dev_index = ptr, nbytes, device, dev_index
        self.keep, self.torch_dev = keep, torch_dev


_CAI_CODE = {"<f2": 1, "<u2": 2, "<i2": 2, "<f4": 3}


def _dlpack_buf(x):
    """A borrowed view of x through DLPack (the capsule kept alive with it)."""
    class DLDevice(ctypes.Structure):
        _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]

    class DLDataType(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]

    class DLTensor(ctypes.Structure):
        _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                    ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                    ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]

    dev = x.__dlpack_device__()[0] if hasattr(x, "__dlpack_device__") else 1
    # CUDA: ordered before the legacy default stream, the one libkvstash copies on
    cap = x.__dlpack__(stream=1) if dev == 2 else x.__dlpack__()
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    t = DLTensor.from_address(get(cap, b"dltensor"))  # DLManagedTensor starts with its DLTensor
    shape = tuple(t.shape[i] for i in range(t.ndim))
    if t.strides:
        want, acc = [], 1
        for n in reversed(shape):
            want.append(acc)
            acc *= n
        if tuple(t.strides[i] for i in range(t.ndim)) != tuple(reversed(want)):
            raise ValueError("a DLPack tensor must be C-contiguous")
    code = {(2, 16): 1, (4, 16): 2, (1, 16): 2, (0, 16): 2, (2, 32): 3}.get((t.dtype.code, t.dtype.bits))
    if t.device.device_type not in (1, 2, 3):
        raise ValueError(f"DLPack device type {t.device.device_type}: only CPU and CUDA memory")
    size = 1
    for n in shape:
        size *= n
    buf = _Buf((t.data or 0) + t.byte_offset, size * (t.dtype.bits // 8),
               device=t.device.device_type == 2, dev_index=t.device.device_id, keep=(cap, x))
    return buf, shape, code


def _buf_of(x, what, writable):
    """(buf, shape, code) of a numpy array, a torch tensor (CPU or CUDA), an
    object with __cuda_array_interface__, or one with __dlpack__. Tensors must
    be C-contiguous where written into (out=); read ones are made so."""
    if isinstance(x, np.ndarray):
        a = x if writable else np.ascontiguousarray(x)
        if writable and not a.flags.c_contiguous:
            raise ValueError(f"{what} must be C-contiguous")
        code = {np.dtype(np.float16): 1, np.dtype(np.uint16): 2,
                np.dtype(np.float32): 3}.get(a.dtype)
        return _Buf(a.ctypes.data, a.nbytes, keep=a), a.shape, code
    if _is_torch(x):
        t = x.detach()
        if not t.is_contiguous():
            if writable:
                raise ValueError(f"{what} must be a contiguous tensor")
            t = t.contiguous()
        dev = t.device.type == "cuda"
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{what}: tensors on {t.device} are not supported (cpu, cuda)")
        return (_Buf(t.data_ptr(), t.numel() * t.element_size(), device=dev,
                     dev_index=t.device.index or 0, keep=t, torch_dev=t.device if dev else None),
                tuple(t.shape), _torch_code(t))
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        shape = tuple(cai["shape"])
        if cai.get("strides") is not None:
            want, acc = [], int(cai["typestr"][2:])
            for n in reversed(shape):
                want.append(acc)
                acc *= n
            if tuple(cai["strides"]) != tuple(reversed(want)):
                raise ValueError(f"{what} must be C-contiguous")
        if writable and cai["data"][1]:
            raise ValueError(f"{what} is read-only")
        size = 1
        for n in shape:
            size *= n
        code = _CAI_CODE.get(cai["typestr"])
        return (_Buf(cai["data"][0], size * int(cai["typestr"][2:]), device=True, keep=x),
                shape, code)
    if hasattr(x, "__dlpack__"):
        return _dlpack_buf(x)
    a = np.ascontiguousarray(x)  # lists and the like (read only)
    if writable:
        raise ValueError(f"{what}: a numpy array, a torch tensor or a CUDA array")
    return _buf_of(a, what, False)


class _DeviceCall:
    """Around a C call on device memory: the tensor's CUDA device made current
    and torch's work on it finished first (libkvstash copies on the legacy
    default stream)."""

    def __init__(self, bufs):
        self.tdev = next((b.torch_dev for b in bufs if b.torch_dev is not None), None)
        self.ctx = None

    def __enter__(self):
        if self.tdev is not None:
            import torch
            self.ctx = torch.cuda.device(self.tdev)
            self.ctx.__enter__()
            torch.cuda.current_stream(self.tdev).synchronize()
        return self

    def __exit__(self, *a):
        if self.ctx is not None:
            self.ctx.__exit__(*a)


def _check_kv(buf, shape, code, want_shape, want_code, what):
    if tuple(shape) != tuple(want_shape) or code != want_code:
        got = _CODE_NAME.get(code, "an unsupported dtype")
        raise ValueError(f"{what} must be {_CODE_NAME[want_code]} (numpy: float16 / uint16 bf16 "
                         f"bits / float32; torch: float16 / bfloat16 / float32) of shape "
                         f"{tuple(want_shape)}, got {got} {tuple(shape)}")


# ----------------------------------------------------------------- client
class Client:
    """A connection pool to kvstashd (thread-safe). Use as a context manager or call close()."""

    def __init__(self, url, tenant="default", token=None, timeout_ms=10000,
                 connect_timeout_ms=2000, sockets=2, retries=3, lazy=False, shm=None,
                 tls_ca_file=None, tls_server_name=None, tls_cert_key_file=None, stream=None):
        """shm: None = the same-host shared-memory path where the URL allows it (ipc://,
        tcp:// to loopback), False = never, True = try it whatever the URL.
        tls_*: for tls+tcp:// URLs (tls_ca_file required).
        stream: a kvstashd byte-stream listener (tcp+stream://host:port or
        ipc+stream:///path) that gets go through; everything else uses url, and a get
        whose stream cannot be reached goes through url too. None (default): the
        client asks the daemon for its listener at the first get (kvstashd's default
        config has one on 127.0.0.1:7880) and stays on url without one; False: never;
        "auto": ask now, raising Error (KVS_ENOENT) when it has none."""
        lib = load_library()
        self._lib = lib
        o = _ClientOpts()
        lib.kvs_client_opts_init(ctypes.byref(o))

        def enc(x):
            return x.encode() if x else None
        self._strs = [url.encode(), tenant.encode(), enc(token), enc(tls_ca_file),
                      enc(tls_server_name), enc(tls_cert_key_file)]
        o.url, o.tenant, o.token = self._strs[:3]
        o.tls_ca_file, o.tls_server_name, o.tls_cert_key_file = self._strs[3:]
        o.request_timeout_ms, o.connect_timeout_ms = timeout_ms, connect_timeout_ms
        flags = 1 if lazy else 0
        if shm is False:
            flags |= 2
        elif shm is True:
            flags |= 4
        if stream is False:
            flags |= 8  # KVS_CLIENT_NO_STREAM
        o.n_sockets, o.max_retries, o.flags = sockets, retries, flags
        h = ctypes.c_void_p()
        rv = lib.kvs_client_create(ctypes.byref(o), ctypes.byref(h))
        if rv < 0:
            msg = lib.kvs_client_errmsg(h).decode(errors="replace") if h.value else ""
            lib.kvs_client_free(h)
            raise Error(rv, msg)
        self._h = h
        if stream:
            self._stream = stream.encode()
            self._ok(lib.kvs_client_stream(h, self._stream))

    def close(self):
        if getattr(self, "_h", None):
            self._lib.kvs_client_free(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def __del__(self):
        self.close()

    def _ok(self, rv):
        return _check(rv, self._h)

    def ping(self):
        self._ok(self._lib.kvs_ping(self._h))

    @property
    def shm_enabled(self):
        """Whether gets try the same-host shared-memory path."""
        return bool(self._lib.kvs_client_shm_enabled(self._h))

    def counters(self):
        """What this client's gets and puts did: dict of gets, shm_gets, shm_fallbacks,
        shm_regroups, shm_bytes, leases, releases, release_lost, shm_maps, stream_gets,
        stream_fallbacks, shm_puts, sock_puts, shm_put_fallbacks."""
        c = _Counters()
        _check(self._lib.kvs_client_get_counters(self._h, ctypes.byref(c)))
        return {n: getattr(c, n) for n, _ in _Counters._fields_}

    def connected(self):
        return self._lib.kvs_client_connected(self._h)

    # -- lookup
    def lookup(self, model, tokens, chunks, mode="each"):
        """Which chunks are cached: (status uint8 array - 0 miss, 1 + tier hit -, n_prefix)."""
        t = _tokens(tokens)
        arr = (_Chunk * max(len(chunks), 1))(*[c._c() for c in chunks])
        st = np.zeros(len(chunks), dtype=np.uint8)
        npfx = ctypes.c_size_t()
        m = {"each": 0, "prefix": 1}[mode]
        self._ok(self._lib.kvs_lookup(self._h, _hash(model), t.ctypes.data, len(t), arr,
                                      len(chunks), m, st.ctypes.data, ctypes.byref(npfx)))
        return st, npfx.value

    # -- put / get
    def put(self, model, tokens, chunk, layout, kv, profile="raw", layers_per_group=0, ttl=0,
            nx=False, sync=False):
        """Stores kv, shape (n_layers, 2, chunk.n_tokens, n_kv_heads, head_dim) of the
        layout's dtype: a numpy array (float16; uint16 holding bf16 bits), a torch tensor
        (float16, bfloat16; CPU, or CUDA: copied from the device by libkvstash,
        KVS_PUT_DEVICE), or a CUDA array (__cuda_array_interface__ / __dlpack__)."""
        t = _tokens(tokens)
        buf, shape, code = _buf_of(kv, "kv", False)
        _check_kv(buf, shape, code, layout.shape(chunk.n_tokens), _DTYPES[layout.dtype][0], "kv")
        if chunk.start + chunk.n_tokens > len(t):
            raise ValueError("chunk lies outside tokens")
        p = profile if isinstance(profile, int) else profile_from_name(profile)
        flags = (1 if nx else 0) | (2 if sync else 0) | (4 if buf.device else 0)
        o = _PutOpts(p, layers_per_group, ttl, flags)
        c, lay = chunk._c(), layout._c()
        with _DeviceCall([buf]):
            self._ok(self._lib.kvs_put(self._h, _hash(model), t.ctypes.data, ctypes.byref(c),
                                       ctypes.byref(lay), buf.ptr, ctypes.byref(o)))

    def get(self, model, tokens, chunk, layout, dtype=None, heads=None, out=None, on_group=None,
            window=0, device=None):
        """Fetches a chunk's KV: array (n_layers, 2, n_tokens, heads, head_dim).

        dtype: None (stored) or "f32"; heads: (begin, end) KV-head range;
        on_group(layer_begin, layer_end) is called as each layer group lands.
        out: where to write - a numpy array, a torch tensor (float16 / bfloat16 /
        float32, CPU or CUDA: a CUDA one is filled on the device, KVS_GET_DEVICE,
        lossy profiles decoded by the GPU kernels) or a CUDA array; returned.
        device: without out, a torch tensor is made there ("cpu", "cuda", "cuda:1",
        a torch.device); None: a numpy array (bf16 as uint16 bits)."""
        t = _tokens(tokens)
        o = _GetOpts()
        if dtype is not None:
            o.dtype = _DTYPES[dtype][0]
        if heads is not None:
            o.head_begin, o.head_end = heads
        o.window = window
        if on_group is not None:
            cb = _GROUP_FN(lambda user, lb, le: on_group(lb, le))
            o.on_group = cb
        c, lay = chunk._c(), layout._c()
        nb = self._lib.kvs_get_bound(ctypes.byref(lay), chunk.n_tokens, ctypes.byref(o))
        if nb == 0:
            raise ValueError("bad layout, head range or dtype")
        code = _DTYPES[dtype or layout.dtype][0]
        shape = layout.shape(chunk.n_tokens, heads)
        if out is None:
            if device is None:
                out = np.empty(shape, dtype=_DTYPES[dtype or layout.dtype][1])
            else:
                import torch
                out = torch.empty(shape, dtype=_torch_dtype(code), device=device)
        buf, oshape, ocode = _buf_of(out, "out", True)
        _check_kv(buf, oshape, ocode, shape, code, "out")
        if buf.device:
            o.flags |= 1  # KVS_GET_DEVICE
        with _DeviceCall([buf]):
            self._ok(self._lib.kvs_get(self._h, _hash(model), t.ctypes.data, ctypes.byref(c),
                                       ctypes.byref(lay), buf.ptr, buf.nbytes, ctypes.byref(o)))
        return out

    def put_batch(self, model, tokens, chunks, layout, kvs, profile="raw", layers_per_group=0,
                  ttl=0):
        """Stores several chunks at once (all in flight together); kvs[i] as for put()
        (all on the host, or all on a CUDA device).
        Returns the per-chunk error codes (0 = stored); raises on the first error."""
        t = _tokens(tokens)
        want = _DTYPES[layout.dtype][0]
        bufs = []
        for ch, kv in zip(chunks, kvs):
            b, shape, code = _buf_of(kv, f"kv for {ch}", False)
            _check_kv(b, shape, code, layout.shape(ch.n_tokens), want, f"kv for {ch}")
            if ch.start + ch.n_tokens > len(t):
                raise ValueError("chunk lies outside tokens")
            bufs.append(b)
        if len({b.device for b in bufs}) > 1:
            raise ValueError("kvs: all on the host or all on a CUDA device, not mixed")
        n = len(bufs)
        carr = (_Chunk * max(n, 1))(*[c._c() for c in chunks])
        ptrs = (ctypes.c_void_p * max(n, 1))(*[b.ptr for b in bufs])
        rvs = np.zeros(max(n, 1), dtype=np.int32)
        p = profile if isinstance(profile, int) else profile_from_name(profile)
        o = _PutOpts(p, layers_per_group, ttl, 4 if bufs and bufs[0].device else 0)
        lay = layout._c()
        with _DeviceCall(bufs):
            self._ok(self._lib.kvs_put_batch(self._h, _hash(model), t.ctypes.data, carr, n,
                                             ctypes.byref(lay), ptrs, ctypes.byref(o),
                                             rvs.ctypes.data))
        return rvs[:n]

    def get_batch(self, model, tokens, chunks, layout, dtype=None, heads=None, outs=None,
                  device=None):
        """Fetches several chunks at once (all in flight together): list of arrays as
        get(); outs / device as get()'s out / device (outs all on the host or all on a
        CUDA device)."""
        t = _tokens(tokens)
        o = _GetOpts()
        if dtype is not None:
            o.dtype = _DTYPES[dtype][0]
        if heads is not None:
            o.head_begin, o.head_end = heads
        code = _DTYPES[dtype or layout.dtype][0]
        if outs is None:
            if device is None:
                npdt = _DTYPES[dtype or layout.dtype][1]
                outs = [np.empty(layout.shape(c.n_tokens, heads), dtype=npdt) for c in chunks]
            else:
                import torch
                outs = [torch.empty(layout.shape(c.n_tokens, heads), dtype=_torch_dtype(code),
                                    device=device) for c in chunks]
        if len(outs) != len(chunks):
            raise ValueError("outs: one per chunk")
        bufs = []
        for c, x in zip(chunks, outs):
            b, shape, oc = _buf_of(x, f"out for {c}", True)
            _check_kv(b, shape, oc, layout.shape(c.n_tokens, heads), code, f"out for {c}")
            bufs.append(b)
        if len({b.device for b in bufs}) > 1:
            raise ValueError("outs: all on the host or all on a CUDA device, not mixed")
        if bufs and bufs[0].device:
            o.flags |= 1  # KVS_GET_DEVICE
        n = len(bufs)
        carr = (_Chunk * max(n, 1))(*[c._c() for c in chunks])
        ptrs = (ctypes.c_void_p * max(n, 1))(*[b.ptr for b in bufs])
        caps = (ctypes.c_uint64 * max(n, 1))(*[b.nbytes for b in bufs])
        rvs = np.zeros(max(n, 1), dtype=np.int32)
        lay = layout._c()
        with _DeviceCall(bufs):
            self._ok(self._lib.kvs_get_batch(self._h, _hash(model), t.ctypes.data, carr, n,
                                             ctypes.byref(lay), ptrs, caps, ctypes.byref(o),
                                             rvs.ctypes.data))
        return outs

    # -- key ops
    def exists(self, model, key):
        i = _EntryInfo()
        self._ok(self._lib.kvs_exists(self._h, _hash(model), _hash(key), ctypes.byref(i)))
        return {"present": bool(i.present), "tier": i.tier, "pinned": bool(i.pinned),
                "value_bytes": i.value_bytes}

    def delete(self, key):
        self._ok(self._lib.kvs_delete(self._h, _hash(key)))

    def pin(self, key):
        self._ok(self._lib.kvs_pin(self._h, _hash(key)))

    def unpin(self, key):
        self._ok(self._lib.kvs_unpin(self._h, _hash(key)))

    def ttl(self, key, seconds):
        self._ok(self._lib.kvs_ttl(self._h, _hash(key), seconds))

    def stats(self):
        v = (ctypes.c_uint64 * 64)()
        n = ctypes.c_size_t()
        self._ok(self._lib.kvs_stats(self._h, v, 64, ctypes.byref(n)))
        return {self._lib.kvs_stat_name(i).decode(): v[i] for i in range(n.value)}

    def stats_tiers(self):
        """The server's tiers, RAM first then its disk tiers hottest first: a list of
        dicts (name, tier, present, used, capacity, entries)."""
        rows = (_TierStat * 16)()
        n = ctypes.c_size_t()
        self._ok(self._lib.kvs_stats_tiers(self._h, rows, 16, ctypes.byref(n)))
        return [{"name": r.name.decode(), "tier": r.tier, "present": bool(r.present),
                 "used": r.used, "capacity": r.capacity, "entries": r.entries}
                for r in rows[:n.value]]


# The library is loaded (and its struct layouts checked against the mirrors
# above) at import when it can be found; when it cannot, the first call that
# needs it says where it looked. A layout mismatch fails the import (AbiError).
try:
    load_library()
except OSError:
    pass
