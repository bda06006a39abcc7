#!/usr/bin/env python3
"""Writes the tiny hand-made GGUFs of this folder (fuzz seed corpus and golden
vectors). Names say what test_gguf expects: ok_* open, bad_<ERR>_* fail with
KVS_<ERR>. Run from anywhere: python3 tests/model/corpus_gguf/make_corpus.py"""
import os, struct

here = os.path.dirname(os.path.abspath(__file__))

def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b

def kv(key, t, payload):
    return s(key) + struct.pack("<I", t) + payload

def tensor_info(name, dims, ty, off):
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", ty, off)

def build(kvs, tensors, data, version=3, align=32, magic=b"GGUF", n_t=None, n_kv=None):
    hdr = magic + struct.pack("<IQQ", version, len(tensors) if n_t is None else n_t,
                              len(kvs) if n_kv is None else n_kv)
    body = hdr + b"".join(kvs) + b"".join(tensors)
    pad = (-len(body)) % align
    return body + b"\0" * pad + data

def q4_0_block():  # d = 0.5, q = j for low nibbles, 15-j high
    return struct.pack("<e", 0.5) + bytes((j | ((15 - j) << 4)) for j in range(16))

def q8_0_block():
    return struct.pack("<e", 0.125) + bytes(((j - 16) & 0xff) for j in range(32))

base_kvs = [
    kv("general.architecture", 8, s("llama")),
    kv("general.alignment", 4, struct.pack("<I", 32)),
    kv("t.u8", 0, b"\x07"), kv("t.i8", 1, b"\xff"), kv("t.u16", 2, struct.pack("<H", 513)),
    kv("t.i16", 3, struct.pack("<h", -3)), kv("t.i32", 5, struct.pack("<i", -70000)),
    kv("t.f32", 6, struct.pack("<f", 1.5)), kv("t.bool", 7, b"\x01"),
    kv("t.u64", 10, struct.pack("<Q", 1 << 40)), kv("t.i64", 11, struct.pack("<q", -5)),
    kv("t.f64", 12, struct.pack("<d", 0.25)),
    kv("t.arr_i32", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", 1, -2, 3)),
    kv("t.arr_str", 9, struct.pack("<IQ", 8, 2) + s("ab") + s("xyz")),
]
data = q4_0_block() + q4_0_block()            # 64 elems q4_0 at 0 (36 bytes)
data += b"\0" * ((-len(data)) % 32)
off_q8 = len(data)
data += q8_0_block()                          # 32 elems q8_0
data += b"\0" * ((-len(data)) % 32)
off_f16 = len(data)
data += struct.pack("<4e", 1.0, -2.0, 0.5, 65504.0)
tensors = [tensor_info("a.q4_0", [32, 2], 2, 0), tensor_info("b.q8_0", [32], 8, off_q8),
           tensor_info("c.f16", [4], 1, off_f16)]
ok = build(base_kvs, tensors, data)

files = {
    "ok_small.gguf": ok,
    "ok_v2.gguf": build(base_kvs, tensors, data, version=2),
    "ok_empty.gguf": build([], [], b""),
    "bad_EMAGIC_magic.gguf": build(base_kvs, tensors, data, magic=b"GGUG"),
    "bad_EVERSION_v1.gguf": build(base_kvs, tensors, data, version=1),
    "bad_ETRUNC_header.gguf": ok[:20],
    "bad_ETRUNC_kv.gguf": ok[:70],
    "bad_ETRUNC_data.gguf": ok[:-4],
    "bad_ETOOBIG_ntensors.gguf": build(base_kvs, tensors, data, n_t=1 << 40),
    "bad_ETRUNC_nkv.gguf": build(base_kvs, tensors, data, n_kv=60000),
    "bad_ECORRUPT_valtype.gguf": build([kv("x", 13, b"\0" * 8)], [], b""),
    "bad_ECORRUPT_nested.gguf": build([kv("x", 9, struct.pack("<IQ", 9, 1))], [], b""),
    "bad_ETRUNC_strlen.gguf": build([kv("x", 8, struct.pack("<Q", 1 << 62))], [], b""),
    "bad_ETRUNC_arrlen.gguf": build([kv("x", 9, struct.pack("<IQ", 6, 1 << 61))], [], b""),
    "bad_ECORRUPT_ndims.gguf": build([], [s("t") + struct.pack("<I", 5)], b""),
    "bad_ECORRUPT_blocks.gguf": build([], [tensor_info("t", [31], 2, 0)], b"\0" * 64),
    "bad_ECORRUPT_align.gguf": build([], [tensor_info("t", [4], 0, 8)], b"\0" * 64),
    "bad_ETRUNC_offset.gguf": build([], [tensor_info("t", [4], 0, 1 << 50)], b"\0" * 64),
    "bad_ECORRUPT_dup.gguf": build([], [tensor_info("t", [4], 0, 0), tensor_info("t", [4], 0, 0)],
                                   b"\0" * 64),
    "bad_ECORRUPT_dim0.gguf": build([], [tensor_info("t", [0], 0, 0)], b"\0" * 64),
    "bad_ECORRUPT_alignval.gguf": build([kv("general.alignment", 4, struct.pack("<I", 24))], [], b""),
}
# A tiny byte-level BPE vocabulary: the 256 GPT-2 byte symbols (ids 0-255 in
# byte order), five merges, two specials. test_gguf checks exact ids on it.
def byte_sym(b):
    keep = (33 <= b <= 126) or (0xA1 <= b <= 0xAC) or (0xAE <= b <= 0xFF)
    if keep:
        return chr(b)
    n = sum(1 for x in range(b) if not ((33 <= x <= 126) or (0xA1 <= x <= 0xAC) or (0xAE <= x <= 0xFF)))
    return chr(256 + n)

toks = [byte_sym(b) for b in range(256)]
toks += ["\u0120w", "or", "ld", "\u0120wor", "\u0120world", "<|im_start|>", "<|im_end|>"]
types = [1] * 261 + [3, 3]
merges = ["\u0120 w", "o r", "l d", "\u0120w or", "\u0120wor ld"]
def sarr(xs):
    return struct.pack("<IQ", 8, len(xs)) + b"".join(s(x) for x in xs)
tok_kvs = [
    kv("tokenizer.ggml.model", 8, s("gpt2")), kv("tokenizer.ggml.pre", 8, s("smollm")),
    kv("tokenizer.ggml.tokens", 9, sarr(toks)),
    kv("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, len(types)) + struct.pack("<%di" % len(types), *types)),
    kv("tokenizer.ggml.merges", 9, sarr(merges)),
    kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 261)),
    kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 262)),
]
files["ok_tok.gguf"] = build(tok_kvs, [], b"")

for name, blob in files.items():
    open(os.path.join(here, name + ".case"), "wb").write(blob)  # .case: test data, not a model
print("wrote %d files" % len(files))
