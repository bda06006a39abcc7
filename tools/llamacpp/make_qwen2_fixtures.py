#!/usr/bin/env python3
"""Makes the Qwen2 fixtures of tests/model/fixtures/ from llama.cpp (run
tools/llamacpp/build.sh and tools/fetch-model qwen2.5-coder-0.5b / -1.5b first).

  python3 tools/llamacpp/make_qwen2_fixtures.py [--ref kvs-llama-ref] [--rag musique_s.json]

Writes
  qwen2_vocab.gguf.zst   the tokenizer of Qwen2.5-Coder (both sizes share it): a GGUF with
                         general.architecture and the tokenizer.* keys, no tensors, zstd -19
  qwen2_tok.bin.zst      texts with llama.cpp's ids: every passage and question of MuSiQue
                         items 0-29 and 400 seeded edge-case texts (odd ones with
                         parse_special): { u32 flags | u32 len | text | u32 n | n x i32 ids }
  qwen2_prompts.dat      the logit fixture prompts: { u32 flags | u32 len | text }
  qwen2_0.5b_top8.dat, qwen2_1.5b_top8.dat
                         llama.cpp's ids and top-8 logits at every position, one batch
                         per prompt: { u32 n | n x i32 ids | n x 8 x (i32 id, f32 logit) }.
                         The 1.5B runs from its weights dequantized to F32 (`kvs-llama-ref
                         f32`): on the Q4_K_M file llama.cpp rounds activations to 8 bits,
                         and the first token's huge activations (attention sink) then give
                         a wrong top-1 at position 0 (margin 3.4; the F32 run agrees with us)
Only items 0-99 feed the logit prompts."""
import argparse, json, os, random, struct, subprocess, tempfile

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
out_dir = os.path.join(root, "tests", "model", "fixtures")
home = os.path.expanduser("~")
mdir = os.environ.get("KVS_MODEL_DIR", os.path.join(home, ".cache/kvstash/models"))
models = {"0.5b": os.path.join(mdir, "qwen2.5-coder-0.5b-instruct.gguf"),
          "1.5b": os.path.join(mdir, "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")}
ap = argparse.ArgumentParser()
ap.add_argument("--ref", default=os.path.join(home, ".cache/kvstash/llama.cpp/bin/kvs-llama-ref"))
ap.add_argument("--rag", default=os.path.join(os.path.dirname(root), "shared/data/rag/musique_s.json"))
args = ap.parse_args()
data = json.load(open(args.rag))

# ---- tokenizer-only GGUF: header keys copied byte for byte
def gguf_vocab(path):
    f = open(path, "rb")
    def rd(fmt):
        return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    def skip(t):
        if t == 8:
            f.seek(rd("Q"), 1)
        elif t == 9:
            et, n = rd("I"), rd("Q")
            if et in sizes:
                f.seek(sizes[et] * n, 1)
            else:
                for _ in range(n):
                    skip(et)
        else:
            f.seek(sizes[t], 1)
    assert f.read(4) == b"GGUF"
    ver, nt, nkv = rd("I"), rd("Q"), rd("Q")
    keep = []
    for _ in range(nkv):
        start = f.tell()
        k = f.read(rd("Q")).decode()
        skip(rd("I"))
        end = f.tell()
        if k == "general.architecture" or k.startswith("tokenizer."):
            f.seek(start)
            keep.append(f.read(end - start))
    return b"GGUF" + struct.pack("<IQQ", ver, 0, len(keep)) + b"".join(keep)

def rec(text, special):
    b = text.encode("utf-8")
    return struct.pack("<II", 1 if special else 0, len(b)) + b

def run(model, mode, recs, extra=()):
    with tempfile.TemporaryDirectory() as td:
        i, o = os.path.join(td, "in"), os.path.join(td, "out")
        open(i, "wb").write(b"".join(recs))
        subprocess.run([args.ref, mode, model, i, o, *extra], check=True, stderr=subprocess.DEVNULL)
        return open(o, "rb").read()

def zst(name, blob):
    raw = os.path.join(out_dir, name)
    open(raw, "wb").write(blob)
    subprocess.run(["zstd", "-q", "-f", "-19", "--rm", raw], check=True)

os.makedirs(out_dir, exist_ok=True)
m05 = models["0.5b"]
zst("qwen2_vocab.gguf", gguf_vocab(m05))

texts = []
for item in data[:30]:
    texts += [c["text"] for c in item["ctxs"]] + [item["question"]]
random.seed(11)
pools = [
    "abcXYZ", "0123456789", "12345", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n ", "\r",
    "'s", "'t", "'re", "'ll", "'d", "'m", "'ve", "'S", "'T", "'RE", "'Ll", "'x",
    ".,;:!?-()[]{}\"'", "$%&*+/<=>@\\^_`|~", "...", "!!\n", "==\n\n",
    "\u00e9\u00e0\u00fc\u00f1\u00e7\u00c5\u00d8\u00df", "\u4e2d\u6587\u5b57\u7b26\u3002\uff0c",
    "\u65e5\u672c\u8a9e\u304b\u306a\u30ab\u30ca", "\ud55c\uad6d\uc5b4", "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439", "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\u0939\u093f\u0928\u094d\u0926\u0940", "\u0e44\u0e17\u0e22", "\U0001F600\U0001F389\U0001F44D\U0001F3FD",
    "\u2460\u2461\u2462", "\u00bd\u00bc\u00be", "\u00b2\u00b3\u00b9", "\u0660\u0661\u0662\u0663",
    "\u2160\u2161\u2162", "\u00a0", "\u2003", "\u200b", "\u3000", "\u0301", "e\u0301", "\ufeff",
    "\u2014\u2013\u2026", "\u00ab\u00bb\u201e\u201c\u201d", "\u2122\u00a9\u00ae", "\u2211\u222b\u221a\u221e",
    "def f(x):\n    return x+1\n", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|fim_prefix|>",
]
tricky = []
for i in range(400):
    k = random.randint(1, 12)
    tricky.append("".join(random.choice(pools) if random.random() < 0.5
                          else random.choice(random.choice(pools)) for _ in range(k)))
trecs = [rec(t, False) for t in texts] + [rec(t, i % 2 == 1) for i, t in enumerate(tricky)]
ids = run(m05, "tok", trecs)
blob, off, ntok = bytearray(), 0, 0
for r in trecs:
    n = struct.unpack_from("<I", ids, off)[0]
    blob += r + ids[off:off + 4 + 4 * n]
    off += 4 + 4 * n
    ntok += n
zst("qwen2_tok.bin", bytes(blob))
print("qwen2 tokenizer fixture: %d texts (%d MuSiQue, %d edge cases), %d tokens"
      % (len(trecs), len(texts), len(tricky), ntok))

def chat(msgs, gen=True):
    s = "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in msgs)
    return s + ("<|im_start|>assistant\n" if gen else "")
def first_words(t, n):
    return " ".join(t.split(" ")[:n])
it0, it3, it7 = data[0], data[3], data[7]
sysmsg = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
prompts = [
    (chat([("system", sysmsg), ("user", "What is the capital of France? Answer in one word.")]), True),
    (first_words(it0["ctxs"][0]["text"], 90), False),
    (chat([("system", "Answer the question using the passages. Answer with a few words."),
           ("user", first_words(it3["ctxs"][0]["text"], 60) + "\n\n" +
            first_words(it3["ctxs"][1]["text"], 60) + "\n\nQuestion: " + it3["question"])]), True),
    ("It's 3.14159 -- isn't it? They'll say 2,048 items cost $12.50 (approx.)\n\n\tTabs  and   spaces;"
     " caf\u00e9 na\u00efve \u00fcber \u4e2d\u6587 \U0001F600 emoji!!! x\u00b2+y\u00b2=z\u00b2 The END.", False),
    ("def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
     + first_words(it7["ctxs"][2]["text"], 60) + " " + it7["question"], False),
]
precs = [rec(t, s) for t, s in prompts]
open(os.path.join(out_dir, "qwen2_prompts.dat"), "wb").write(b"".join(precs))
for tag, path in models.items():
    if not os.path.exists(path):
        print("skipped %s: %s absent" % (tag, path))
        continue
    if tag == "1.5b":
        f32 = os.path.join(tempfile.gettempdir(), "kvs-qwen2-1.5b-f32.gguf")
        subprocess.run([args.ref, "f32", path, f32], check=True, stderr=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        lg = run(f32, "logits", precs, ["8"])
        os.unlink(f32)
    else:
        lg = run(path, "logits", precs, ["8"])
    open(os.path.join(out_dir, "qwen2_%s_top8.dat" % tag), "wb").write(lg)
    pos, off = 0, 0
    for _ in prompts:
        n = struct.unpack_from("<I", lg, off)[0]
        off += 4 + 4 * n + 64 * n
        pos += n
    print("qwen2 %s logit fixture: %d prompts, %d positions" % (tag, len(prompts), pos))
