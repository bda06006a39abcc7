#!/usr/bin/env python3
"""Makes tests/model/fixtures/ from llama.cpp (run tools/llamacpp/build.sh first).

  python3 tools/llamacpp/make_fixtures.py [--model GGUF] [--ref kvs-llama-ref]

Writes
  prompts.dat        the fixture prompts: { u32 flags (bit0 parse_special) | u32 len | text }
  logits_top8.dat    llama.cpp's answer per prompt: { u32 n | n x i32 ids |
                     n x 8 x (i32 id, f32 logit) } (all positions, one batch each)
  tricky_tok.bin.zst 400 seeded random mixes of scripts, digits, spaces, marks,
                     emoji, contractions and special-token texts (odd ones with
                     parse_special), same record layout as musique_tok
  musique_tok.bin.zst  every passage (ctxs[].text) and question of items 0-149 of
                     musique_s.json with llama.cpp's ids:
                     { u32 flags | u32 len | text | u32 n | n x u16 ids }, zstd -19
Only items 0-99 feed the logit fixture; the tokenizer check covers all items
(tokenizing is not tuning anything)."""
import argparse, json, os, random, struct, subprocess, sys, tempfile

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
out_dir = os.path.join(root, "tests", "model", "fixtures")
home = os.path.expanduser("~")

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=os.path.join(home, ".cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
ap.add_argument("--ref", default=os.path.join(home, ".cache/kvstash/llama.cpp/bin/kvs-llama-ref"))
ap.add_argument("--rag", default=os.path.join(root, "data", "rag", "musique_s.json.zst"))
args = ap.parse_args()
if args.rag.endswith(".zst"):  # the repo's copy (data/README.md)
    data = json.loads(subprocess.run(["zstd", "-dc", args.rag], check=True, capture_output=True).stdout)
else:
    data = json.load(open(args.rag))

def rec(text, special):
    b = text.encode("utf-8")
    return struct.pack("<II", 1 if special else 0, len(b)) + b

def chat(msgs, gen=True):
    s = "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in msgs)
    return s + ("<|im_start|>assistant\n" if gen else "")

def first_words(t, n):
    return " ".join(t.split(" ")[:n])

# A few prompts, a few hundred positions in all (items 0-99 only).
it0, it3, it7 = data[0], data[3], data[7]
prompts = [
    (chat([("system", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
           ("user", "What is the capital of France? Answer in one word.")]), True),
    (first_words(it0["ctxs"][0]["text"], 90), False),
    (chat([("system", "Answer the question using the passages."),
           ("user", first_words(it3["ctxs"][0]["text"], 60) + "\n\n" +
            first_words(it3["ctxs"][1]["text"], 60) + "\n\nQuestion: " + it3["question"])]), True),
    ("It's 3.14159 -- isn't it? They'll say 2,048 items cost $12.50 (approx.)\n\n\tTabs  and   spaces;"
     " caf\u00e9 na\u00efve \u00fcber \u4e2d\u6587 \U0001F600 emoji!!! x\u00b2+y\u00b2=z\u00b2 The END.", False),
    (first_words(it7["ctxs"][2]["text"], 70) + " " + it7["question"], False),
]

def run(mode, recs, extra=()):
    with tempfile.TemporaryDirectory() as td:
        i, o = os.path.join(td, "in"), os.path.join(td, "out")
        open(i, "wb").write(b"".join(recs))
        subprocess.run([args.ref, mode, args.model, i, o, *extra], check=True,
                       stderr=subprocess.DEVNULL)
        return open(o, "rb").read()

os.makedirs(out_dir, exist_ok=True)
precs = [rec(t, s) for t, s in prompts]
open(os.path.join(out_dir, "prompts.dat"), "wb").write(b"".join(precs))
lg = run("logits", precs, ["8"])
open(os.path.join(out_dir, "logits_top8.dat"), "wb").write(lg)
pos, off = 0, 0
for _ in prompts:
    n = struct.unpack_from("<I", lg, off)[0]
    off += 4 + 4 * n + 64 * n
    pos += n
print("logit fixture: %d prompts, %d positions" % (len(prompts), pos))

texts = []
for item in data:
    for c in item["ctxs"]:
        texts.append(c["text"])
    texts.append(item["question"])
trecs = [rec(t, False) for t in texts]
ids = run("tok", trecs)
blob, off = bytearray(), 0
ntok = 0
for r in trecs:
    n = struct.unpack_from("<I", ids, off)[0]
    v = struct.unpack_from("<%di" % n, ids, off + 4)
    off += 4 + 4 * n
    assert all(0 <= x < 65536 for x in v)
    blob += r + struct.pack("<I", n) + struct.pack("<%dH" % n, *v)
    ntok += n
raw = os.path.join(out_dir, "musique_tok.bin")
open(raw, "wb").write(blob)
subprocess.run(["zstd", "-q", "-f", "-19", "--rm", raw], check=True)
print("tokenizer fixture: %d texts, %d tokens" % (len(texts), ntok))

# Tokenizer edge cases: random mixes drawn from many Unicode categories.
random.seed(7)
pools = [
    "abcXYZ", "0123456789", " ", "  ", "\n", "\t", "\r\n", "'s", "'t", "'re", "'ll", "'d", "'m", "'ve",
    "'S", ".,;:!?-()[]{}\"'", "$%&*+/<=>@\\^_`|~", "\u00e9\u00e0\u00fc\u00f1\u00e7\u00c5\u00d8\u00df",
    "\u4e2d\u6587\u5b57\u7b26", "\u65e5\u672c\u8a9e\u304b\u306a\u30ab\u30ca", "\ud55c\uad6d\uc5b4",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac", "\u0420\u0443\u0441\u0441\u043a\u0438\u0439",
    "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\u0939\u093f\u0928\u094d\u0926\u0940", "\u0e44\u0e17\u0e22",
    "\U0001F600\U0001F389\U0001F44D\U0001F3FD", "\u2460\u2461\u2462", "\u00bd\u00bc\u00be",
    "\u00b2\u00b3\u00b9", "\u0660\u0661\u0662\u0663", "\u2160\u2161\u2162", "\u00a0", "\u2003",
    "\u200b", "\u3000", "\u0301", "e\u0301", "\ufeff", "\u2014\u2013\u2026",
    "\u00ab\u00bb\u201e\u201c\u201d", "\u2122\u00a9\u00ae", "\u2211\u222b\u221a\u221e",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>",
]
tricky = []
for i in range(400):
    k = random.randint(1, 12)
    tricky.append("".join(random.choice(pools) if random.random() < 0.5
                          else random.choice(random.choice(pools)) for _ in range(k)))
trecs = [rec(t, i % 2 == 1) for i, t in enumerate(tricky)]
ids = run("tok", trecs)
blob, off = bytearray(), 0
for r in trecs:
    n = struct.unpack_from("<I", ids, off)[0]
    v = struct.unpack_from("<%di" % n, ids, off + 4)
    off += 4 + 4 * n
    blob += r + struct.pack("<I", n) + struct.pack("<%dH" % n, *v)
raw = os.path.join(out_dir, "tricky_tok.bin")
open(raw, "wb").write(blob)
subprocess.run(["zstd", "-q", "-f", "-19", "--rm", raw], check=True)
print("tricky tokenizer fixture: %d texts" % len(tricky))
