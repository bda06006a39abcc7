#!/usr/bin/env python3
"""RAG with kvstash: pre-warm MuSiQue passages, then ask which passages of a
new prompt are already cached.

  rag_prewarm.py --url tcp://127.0.0.1:7878 [--items 0-4] [--ask 3] [--gguf PATH]

1. For each passage of the pre-warm items, compute its token ids and its KV
   as a content chunk (prefilled alone at positions 0..n-1), and put it.
2. Build the prompt of the --ask item the way docs/ say (instruction, each
   passage as its own chunk, then the question), with the passages of another
   item mixed in, and LOOKUP which passage chunks are cached.

Token ids and KV come from the reference engine (model/, SmolLM2-135M GGUF,
through libkvstash_refengine.so) when the GGUF and that library are found.
Otherwise a clearly labelled STAND-IN is used: token ids are hashes of words
and KV are random numbers of the SmolLM2 shape - enough to show the cache
behaviour, not a model's KV.

Only dev items (0-99) are used by default: items 100-149 are held out.
"""
import argparse
import ctypes
import ctypes.util
import hashlib
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "client", "python"))
import kvstash  # noqa: E402

# The MuSiQue subset the repository carries (data/README.md: CC BY 4.0, items
# 100-149 held out); --data reads another copy, plain JSON or .zst.
DATA = os.path.join(REPO, "data", "rag", "musique_s.json.zst")
INSTRUCTION = ("You will be asked a question after reading several passages. "
               "Answer with a short phrase taken from the passages.\n")


def read_json(path):
    """A JSON file, plain or zstd-compressed (the zstandard module when
    installed, else libzstd through ctypes: libkvstash depends on it)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        try:
            import zstandard
            raw = zstandard.ZstdDecompressor().decompress(raw)
        except ImportError:
            z = ctypes.CDLL(ctypes.util.find_library("zstd") or "libzstd.so.1")
            z.ZSTD_getFrameContentSize.restype = ctypes.c_ulonglong
            z.ZSTD_getFrameContentSize.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
            z.ZSTD_decompress.restype = ctypes.c_size_t
            z.ZSTD_decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
            z.ZSTD_isError.argtypes = [ctypes.c_size_t]
            n = z.ZSTD_getFrameContentSize(raw, len(raw))
            if n >= 2**63:  # ZSTD_CONTENTSIZE_UNKNOWN / _ERROR
                raise ValueError(f"{path}: a zstd frame without its size")
            buf = ctypes.create_string_buffer(n)
            got = z.ZSTD_decompress(buf, n, raw, len(raw))
            if z.ZSTD_isError(got) or got != n:
                raise ValueError(f"{path}: a corrupt zstd frame")
            raw = buf.raw[:n]
    return json.loads(raw)


class RefEngine:
    """Tokenizer + chunk KV from the reference engine (libkvstash_refengine.so)."""

    def __init__(self, lib_path, gguf):
        self.lib = ctypes.CDLL(lib_path)
        self.lib.kvsx_open.restype = ctypes.c_void_p
        self.lib.kvsx_open.argtypes = [ctypes.c_char_p]
        for f in ("kvsx_layout", "kvsx_model_id", "kvsx_close"):
            getattr(self.lib, f).argtypes = [ctypes.c_void_p] + ([ctypes.c_void_p] if f != "kvsx_close" else [])
        self.lib.kvsx_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p,
                                           ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
        self.lib.kvsx_tokenize_bound.restype = ctypes.c_size_t
        self.lib.kvsx_tokenize_bound.argtypes = [ctypes.c_size_t]
        self.lib.kvsx_chunk_kv.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32,
                                           ctypes.c_void_p]
        self.h = self.lib.kvsx_open(gguf.encode())
        if not self.h:
            raise RuntimeError(f"could not load {gguf}")
        lay = kvstash._Layout()
        self.lib.kvsx_layout(self.h, ctypes.byref(lay))
        self.layout = kvstash.Layout(lay.n_layers, lay.n_kv_heads, lay.head_dim, "f16",
                                     rope_theta=lay.rope_theta, rope_dims=lay.rope_dims,
                                     rope_type=lay.rope_type, rope_freq_scale=lay.rope_freq_scale)
        mid = (ctypes.c_uint8 * 16)()
        self.lib.kvsx_model_id(self.h, mid)
        self.model = bytes(mid)
        self.label = f"reference engine ({os.path.basename(gguf)})"

    def tokenize(self, text):
        b = text.encode()
        cap = self.lib.kvsx_tokenize_bound(len(b))
        out = np.empty(cap, dtype=np.int32)
        n = ctypes.c_size_t()
        if self.lib.kvsx_tokenize(self.h, b, out.ctypes.data, cap, ctypes.byref(n)):
            raise RuntimeError("tokenize failed")
        return out[:n.value].copy()

    def chunk_kv(self, tokens):
        kv = np.empty(self.layout.shape(len(tokens)), dtype=np.float16)
        if self.lib.kvsx_chunk_kv(self.h, tokens.ctypes.data, len(tokens), kv.ctypes.data):
            raise RuntimeError("prefill failed")
        return kv


class StandIn:
    """STAND-IN: word-hash token ids and random KV of the SmolLM2-135M shape."""

    def __init__(self):
        self.layout = kvstash.Layout(30, 3, 64, "f16", rope_theta=100000.0)
        self.model = hashlib.blake2b(b"stand-in model", digest_size=16).digest()
        self.label = "STAND-IN (word-hash token ids, random KV; not a model)"

    def tokenize(self, text):
        return np.array([int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(),
                                        "little") % 49152 for w in text.split()], dtype=np.int32)

    def chunk_kv(self, tokens):
        rng = np.random.default_rng(int(tokens.sum()) & 0xFFFFFFFF)
        return rng.standard_normal(self.layout.shape(len(tokens))).astype(np.float16)


def find_engine(args):
    gguf = args.gguf or os.environ.get("KVS_MODEL_PATH") or os.path.expanduser(
        "~/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    libs = [args.refengine] if args.refengine else [
        os.path.join(REPO, d, "client", "libkvstash_refengine.so")
        for d in ("build/release", "build/test", "build/dev")]
    for lib in libs:
        if lib and os.path.exists(lib) and os.path.exists(gguf):
            try:
                return RefEngine(lib, gguf)
            except (OSError, RuntimeError) as e:
                print(f"reference engine unavailable ({e}); using the stand-in")
    return StandIn()


def item_range(s):
    a, _, b = s.partition("-")
    return range(int(a), int(b or a) + 1)


def prompt_chunks(eng, passages, question):
    """Instruction + each passage tokenized on its own + question; content spans of the passages."""
    parts = [eng.tokenize(INSTRUCTION)]
    spans, pos = [], len(parts[0])
    for p in passages:
        t = eng.tokenize(p)
        spans.append((pos, len(t)))
        parts.append(t)
        pos += len(t)
    parts.append(eng.tokenize("Question: " + question + "\nAnswer:"))
    return np.concatenate(parts), spans


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--tenant", default="rag-example")
    ap.add_argument("--items", default="0-4", help="items to pre-warm (dev items 0-99)")
    ap.add_argument("--ask", type=int, default=3, help="item whose question is asked")
    ap.add_argument("--mix", type=int, default=7, help="item whose passages are mixed in (not warmed)")
    ap.add_argument("--gguf")
    ap.add_argument("--refengine")
    ap.add_argument("--profile", default="raw")
    ap.add_argument("--data", default=DATA, help="MuSiQue JSON, plain or .zst (default: the repo's data/rag copy)")
    args = ap.parse_args()
    items = read_json(args.data)
    for i in list(item_range(args.items)) + [args.ask, args.mix]:
        if i >= 100:
            sys.exit("items 100-149 are held out: use 0-99")
    eng = find_engine(args)
    print(f"token ids and KV from: {eng.label}")
    print(f"model id {eng.model.hex()}  layout L={eng.layout.n_layers} H={eng.layout.n_kv_heads} "
          f"D={eng.layout.head_dim}")
    with kvstash.Client(args.url, tenant=args.tenant, timeout_ms=60000) as c:
        n_put = n_bytes = 0
        for i in item_range(args.items):
            for ctx in items[i]["ctxs"]:
                tok = eng.tokenize(ctx["text"])
                ch = kvstash.chunk_spans(eng.model, tok, [(0, len(tok))])[0]
                if c.exists(eng.model, ch.key)["present"]:
                    continue
                kv = eng.chunk_kv(tok)
                c.put(eng.model, tok, ch, eng.layout, kv, profile=args.profile)
                n_put += 1
                n_bytes += kv.nbytes
        print(f"pre-warmed items {args.items}: {n_put} passages stored ({n_bytes / 2**20:.1f} MiB of KV)")

        ask, mix = items[args.ask], items[args.mix]
        passages = [p["text"] for p in ask["ctxs"][:5]] + [p["text"] for p in mix["ctxs"][:3]]
        tokens, spans = prompt_chunks(eng, passages, ask["question"])
        chunks = kvstash.chunk_spans(eng.model, tokens, spans)
        status, _ = c.lookup(eng.model, tokens, chunks, mode="each")
        print(f"new prompt: {len(tokens)} tokens, question of item {args.ask}: {ask['question']!r}")
        cached = 0
        for k, (ch, st) in enumerate(zip(chunks, status)):
            src = f"item {args.ask}" if k < 5 else f"item {args.mix}"
            state = "cached (tier %d)" % (st - 1) if st else "not cached"
            cached += ch.n_tokens if st else 0
            print(f"  passage {k} ({src}) tokens [{ch.start}, {ch.start + ch.n_tokens}): {state}")
        print(f"{cached} of {len(tokens)} prompt tokens can come from kvstash")
        # fetch one cached passage back, layer group by layer group
        hit = [ch for ch, st in zip(chunks, status) if st]
        if hit:
            groups = []
            kv = c.get(eng.model, tokens, hit[0], eng.layout, on_group=lambda a, b: groups.append((a, b)))
            print(f"fetched passage at [{hit[0].start}, ...): KV {kv.shape} {kv.dtype}, "
                  f"{len(groups)} layer groups streamed")


if __name__ == "__main__":
    main()
