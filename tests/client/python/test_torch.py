"""torch tensors as they come (CPU here; CUDA in test_torch_gpu.py): float16
and bfloat16 KV put and got back bit-exact, out= tensors filled in place,
device= making a tensor, and wrong dtype/shape/layout refused. Skipped where
torch is not installed."""
import os

import numpy as np
import pytest

import kvstash

torch = pytest.importorskip("torch")

MODEL = kvstash.model_id_from_hex("7e" * 16)
L16 = kvstash.Layout(n_layers=3, n_kv_heads=2, head_dim=8, dtype="f16")
LBF = kvstash.Layout(n_layers=3, n_kv_heads=2, head_dim=8, dtype="bf16")


@pytest.fixture
def client(server_url):
    with kvstash.Client(server_url, tenant=f"torch-{os.getpid()}", timeout_ms=20000) as c:
        yield c


def _chunk(n, seed):
    toks = np.arange(seed, seed + n, dtype=np.int32)
    return toks, kvstash.chunk_spans(MODEL, toks, [(0, n)])[0]


def test_f16_tensor_out(client):
    toks, ch = _chunk(20, 1000)
    kv = torch.randn(L16.shape(20), dtype=torch.float32).to(torch.float16)
    client.put(MODEL, toks, ch, L16, kv)
    out = torch.zeros(L16.shape(20), dtype=torch.float16)
    got = client.get(MODEL, toks, ch, L16, out=out)
    assert got is out and torch.equal(out, kv)
    # device="cpu": a new tensor; f32 output into a float32 tensor
    t = client.get(MODEL, toks, ch, L16, device="cpu")
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float16 and torch.equal(t, kv)
    o32 = torch.empty(L16.shape(20), dtype=torch.float32)
    client.get(MODEL, toks, ch, L16, dtype="f32", out=o32)
    assert torch.equal(o32, kv.float())
    # a non-contiguous view is accepted as input (copied), refused as out
    client.put(MODEL, toks, ch, L16, kv.transpose(0, 1).contiguous().transpose(0, 1))
    with pytest.raises(ValueError, match="contiguous"):
        client.get(MODEL, toks, ch, L16, out=torch.empty((2, 3, 20, 2, 8), dtype=torch.float16).transpose(0, 1))


def test_bf16_tensor(client):
    toks, ch = _chunk(16, 2000)
    kv = torch.randn(LBF.shape(16)).to(torch.bfloat16)
    client.put(MODEL, toks, ch, LBF, kv)
    t = client.get(MODEL, toks, ch, LBF, device="cpu")
    assert t.dtype == torch.bfloat16 and torch.equal(t, kv)
    out = torch.empty(LBF.shape(16), dtype=torch.bfloat16)
    client.get(MODEL, toks, ch, LBF, out=out)
    assert torch.equal(out, kv)
    # numpy sees the same bits as uint16
    bits = client.get(MODEL, toks, ch, LBF)
    assert bits.dtype == np.uint16
    assert np.array_equal(bits, kv.view(torch.int16).numpy().view(np.uint16))
    # and numpy bits put back read as the same bf16 tensor
    toks2, ch2 = _chunk(16, 2100)
    client.put(MODEL, toks2, ch2, LBF, bits)
    assert torch.equal(client.get(MODEL, toks2, ch2, LBF, device="cpu"), kv)
    if kvstash.has_codec():  # a lossy profile decodes to bf16 close to it
        toks3, ch3 = _chunk(16, 2200)
        client.put(MODEL, toks3, ch3, LBF, kv, profile="int8")
        back = client.get(MODEL, toks3, ch3, LBF, device="cpu")
        assert back.dtype == torch.bfloat16
        assert float((back.float() - kv.float()).abs().max()) < 0.1


def test_wrong_tensors_refused(client):
    toks, ch = _chunk(8, 3000)
    with pytest.raises(ValueError, match="must be f16"):
        client.put(MODEL, toks, ch, L16, torch.zeros(L16.shape(8), dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="must be bf16"):
        client.put(MODEL, toks, ch, LBF, torch.zeros(LBF.shape(8), dtype=torch.float16))
    with pytest.raises(ValueError, match="shape"):
        client.put(MODEL, toks, ch, L16, torch.zeros((3, 2, 7, 2, 8), dtype=torch.float16))
    with pytest.raises(ValueError, match="unsupported dtype"):
        client.put(MODEL, toks, ch, L16, torch.zeros(L16.shape(8), dtype=torch.float64))
    client.put(MODEL, toks, ch, L16, torch.ones(L16.shape(8), dtype=torch.float16))
    with pytest.raises(ValueError, match="must be f16"):
        client.get(MODEL, toks, ch, L16, out=torch.empty(L16.shape(8), dtype=torch.float32))
    if not torch.cuda.is_available():  # a CUDA tensor needs a device: refused by libkvstash
        return


def test_batches_with_tensors(client):
    toks = np.arange(5000, 5048, dtype=np.int32)
    chunks = kvstash.chunk_spans(MODEL, toks, [(0, 16), (16, 32)])
    kvs = [torch.randn(L16.shape(c.n_tokens)).half() for c in chunks]
    rv = client.put_batch(MODEL, toks, chunks, L16, kvs)
    assert list(rv) == [0, 0]
    outs = client.get_batch(MODEL, toks, chunks, L16, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(outs, kvs))
    mine = [torch.empty(L16.shape(c.n_tokens), dtype=torch.float16) for c in chunks]
    assert client.get_batch(MODEL, toks, chunks, L16, outs=mine) is mine
    assert all(torch.equal(a, b) for a, b in zip(mine, kvs))


def test_dlpack_cpu(client):
    """An object that only speaks DLPack (a torch tensor behind a wrapper)."""
    class OnlyDLPack:
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, stream=None):
            return self.t.__dlpack__()

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    toks, ch = _chunk(12, 6000)
    kv = torch.randn(L16.shape(12)).half()
    client.put(MODEL, toks, ch, L16, OnlyDLPack(kv))
    out = torch.zeros(L16.shape(12), dtype=torch.float16)
    client.get(MODEL, toks, ch, L16, out=OnlyDLPack(out))
    assert torch.equal(out, kv)
    # bf16 through DLPack
    toks2, ch2 = _chunk(12, 6100)
    kvb = torch.randn(LBF.shape(12)).to(torch.bfloat16)
    client.put(MODEL, toks2, ch2, LBF, OnlyDLPack(kvb))
    assert torch.equal(client.get(MODEL, toks2, ch2, LBF, device="cpu"), kvb)
