#!/usr/bin/env python3
"""PyTorch baseline for kvs-bench-model: a Llama-shaped prefill in fp16 with
torch.nn.functional.scaled_dot_product_attention (causal, GQA), random weights
of the same shape as ours (speed only). Prints {"tokens":T,"ms":x} per size.

  python3 bench/model/torch_prefill.py --shape smollm2|8b|qwen1.5b|qwen0.5b --tokens 1024[,2048...]
qwen1.5b: Qwen2.5-1.5B (biases on Q, K, V; NEOX pairs, rotate_half as transformers does)."""
import argparse, json, sys

import torch
import torch.nn.functional as F

SHAPES = {
    "smollm2": dict(V=49152, E=576, L=30, H=9, G=3, D=64, FF=1536, theta=100000.0),
    "8b": dict(V=128256, E=4096, L=32, H=32, G=8, D=128, FF=14336, theta=500000.0),
    "qwen1.5b": dict(V=151936, E=1536, L=28, H=12, G=2, D=128, FF=8960, theta=1e6, bias=1, neox=1),
    "qwen0.5b": dict(V=151936, E=896, L=24, H=14, G=2, D=64, FF=4864, theta=1e6, bias=1, neox=1),
}

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="smollm2", choices=SHAPES)
ap.add_argument("--tokens", default="1024")
args = ap.parse_args()
s = SHAPES[args.shape]
dev, dt = "cuda", torch.float16
torch.manual_seed(0)
E, H, G, D, FF, V, L = s["E"], s["H"], s["G"], s["D"], s["FF"], s["V"], s["L"]


def w(o, i):
    return (torch.rand(o, i, device=dev, dtype=dt) * 2 - 1) * (1.7 / i ** 0.5)


layers = [dict(an=torch.ones(E, device=dev, dtype=dt), fn=torch.ones(E, device=dev, dtype=dt),
               qkv=w(H * D + 2 * G * D, E), o=w(E, H * D), gu=w(2 * FF, E), down=w(E, FF),
               b=(torch.rand(H * D + 2 * G * D, device=dev, dtype=dt) - 0.5) if s.get("bias") else None)
          for _ in range(L)]
emb = torch.rand(V, E, device=dev, dtype=dt) * 2 - 1
norm = torch.ones(E, device=dev, dtype=dt)


def rms(x, wt):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype) * wt


def rope(x, cos, sin):  # x (1, heads, T, D), adjacent pairs (NEOX: halves)
    if s.get("neox"):
        a, b = x[..., : D // 2], x[..., D // 2:]
        return torch.cat((a * cos - b * sin, a * sin + b * cos), -1)
    x2 = x.view(*x.shape[:-1], D // 2, 2)
    a, b = x2[..., 0], x2[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)


@torch.inference_mode()
def prefill(tok):
    T = tok.shape[0]
    pos = torch.arange(T, device=dev, dtype=torch.float32)
    inv = s["theta"] ** (-torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D)
    ang = torch.outer(pos, inv)
    cos, sin = ang.cos().to(dt), ang.sin().to(dt)
    x = emb[tok].unsqueeze(0)
    for ly in layers:
        h = rms(x, ly["an"]) @ ly["qkv"].T
        if ly["b"] is not None:
            h = h + ly["b"]
        q, k, v = h.split([H * D, G * D, G * D], -1)
        q = rope(q.view(1, T, H, D).transpose(1, 2), cos, sin)
        k = rope(k.view(1, T, G, D).transpose(1, 2), cos, sin)
        v = v.view(1, T, G, D).transpose(1, 2)
        try:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        except TypeError:  # torch < 2.5
            a = F.scaled_dot_product_attention(q, k.repeat_interleave(H // G, 1),
                                               v.repeat_interleave(H // G, 1), is_causal=True)
        x = x + a.transpose(1, 2).reshape(1, T, H * D) @ ly["o"].T
        gu = rms(x, ly["fn"]) @ ly["gu"].T
        g, u = gu.split([FF, FF], -1)
        x = x + (F.silu(g) * u) @ ly["down"].T
    return rms(x[:, -1], norm) @ emb.T


for T in [int(t) for t in args.tokens.split(",")]:
    tok = torch.randint(0, V, (T,), device=dev)
    best = None
    for rep in range(3):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        prefill(tok)
        e1.record()
        torch.cuda.synchronize()
        ms = e0.elapsed_time(e1)
        if rep > 0:
            best = ms if best is None else min(best, ms)
    print(json.dumps({"tokens": T, "ms": round(best, 3)}, separators=(",", ":")), flush=True)
