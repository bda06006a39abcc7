#!/usr/bin/env python3
"""Writes seeds for fuzz_llama_state (tests/llamacpp/corpus_state): 3 layout
bytes (layers-1, heads-1, head_dim/8-1, each mod 4/4/8 in the target), then a
llama.cpp sequence state blob as kvs_llama.h describes it (state_write of
llama.cpp 0.3.16). Run by hand; the outputs are committed."""
import os, random, struct, sys

def blob(L, H, D, cells, v_trans, n_stream=1, stream=0, pos0=0, seq=0, shuffle=False, rng=None):
    row = H * D * 2
    pos = list(range(pos0, pos0 + cells))
    if shuffle:
        rng.shuffle(pos)
    b = struct.pack("<I", n_stream)
    for s in range(n_stream):
        if s != stream or cells == 0:
            b += struct.pack("<I", 0)
            continue
        b += struct.pack("<I", cells)
        for p in pos:
            b += struct.pack("<iIi", p, 1, seq)
        b += struct.pack("<II", v_trans, L)
        for _ in range(L):
            b += struct.pack("<iQ", 1, row) + bytes(rng.randrange(256) for _ in range(cells * row))
        for _ in range(L):
            if v_trans:
                b += struct.pack("<iII", 1, 2, H * D) + bytes(rng.randrange(256) for _ in range(cells * row))
            else:
                b += struct.pack("<iQ", 1, row) + bytes(rng.randrange(256) for _ in range(cells * row))
    return b

def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus_state")
    os.makedirs(out, exist_ok=True)
    rng = random.Random(7)
    seeds = {
        "seed_l2h2d16_t5_vtrans": (2, 2, 16, dict(cells=5, v_trans=1)),
        "seed_l2h2d16_t5_flat": (2, 2, 16, dict(cells=5, v_trans=0)),
        "seed_l1h1d8_t3_shuffled": (1, 1, 8, dict(cells=3, v_trans=1, shuffle=True, pos0=4)),
        "seed_l3h2d8_t4_stream1of2": (3, 2, 8, dict(cells=4, v_trans=0, n_stream=2, stream=1, seq=1)),
        "seed_l1h1d8_empty": (1, 1, 8, dict(cells=0, v_trans=0)),
    }
    for name, (L, H, D, kw) in seeds.items():
        data = bytes([L - 1, H - 1, D // 8 - 1]) + blob(L, H, D, rng=rng, **kw)
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)

if __name__ == "__main__":
    main()
