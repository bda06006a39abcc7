"""CUDA tensors through the device put/get paths (label gpu; run by
run_gpu.py, which exits 77 without torch or a CUDA device): a CUDA float16 /
bfloat16 tensor is put from the device (KVS_PUT_DEVICE) and got into a CUDA
out= tensor (KVS_GET_DEVICE: lossy profiles decoded by the GPU kernels),
bit-exact against the host path for raw, close for int8; an object with only
__cuda_array_interface__ or only __dlpack__ works the same."""
import os

import numpy as np
import pytest

import kvstash

if os.environ.get("KVS_PY_GPU") != "1":
    pytest.skip("run by run_gpu.py (ctest client_python_gpu, label gpu)", allow_module_level=True)
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

MODEL = kvstash.model_id_from_hex("c0" * 16)
L16 = kvstash.Layout(n_layers=4, n_kv_heads=2, head_dim=64, dtype="f16")
LBF = kvstash.Layout(n_layers=4, n_kv_heads=2, head_dim=64, dtype="bf16")


@pytest.fixture
def client(server_url):
    with kvstash.Client(server_url, tenant=f"gpu-{os.getpid()}", timeout_ms=30000) as c:
        yield c


def _chunk(n, seed):
    toks = np.arange(seed, seed + n, dtype=np.int32)
    return toks, kvstash.chunk_spans(MODEL, toks, [(0, n)])[0]


@pytest.mark.parametrize("layout,tdt", [(L16, torch.float16), (LBF, torch.bfloat16)])
def test_cuda_put_get_raw(client, layout, tdt):
    toks, ch = _chunk(64, 100 if tdt == torch.float16 else 200)
    kv = torch.randn(layout.shape(64), device="cuda").to(tdt)
    client.put(MODEL, toks, ch, layout, kv)  # from the device
    out = torch.empty_like(kv)
    assert client.get(MODEL, toks, ch, layout, out=out) is out  # into the device
    assert torch.equal(out, kv)
    # the host path sees the same bytes
    host = client.get(MODEL, toks, ch, layout, device="cpu")
    assert torch.equal(host, kv.cpu())
    # and a host put reads back on the device
    toks2, ch2 = _chunk(64, 300 if tdt == torch.float16 else 400)
    client.put(MODEL, toks2, ch2, layout, kv.cpu())
    assert torch.equal(client.get(MODEL, toks2, ch2, layout, device="cuda"), kv)


@pytest.mark.parametrize("layout,tdt", [(L16, torch.float16), (LBF, torch.bfloat16)])
def test_cuda_lossy_decoded_on_device(client, layout, tdt):
    if not kvstash.has_codec():
        pytest.skip("codec not built in")
    toks, ch = _chunk(128, 500 if tdt == torch.float16 else 600)
    kv = torch.randn(layout.shape(128), device="cuda").to(tdt)
    client.put(MODEL, toks, ch, layout, kv, profile="int8", layers_per_group=2)
    dev = client.get(MODEL, toks, ch, layout, device="cuda")  # GPU kernels decode
    host = client.get(MODEL, toks, ch, layout, device="cpu")  # the CPU twin
    assert dev.is_cuda and dev.dtype == tdt
    err = float((dev.float() - kv.float()).abs().max())
    assert err < 0.1, err
    diff = float((dev.cpu().float() - host.float()).abs().max())
    assert diff <= 0.02, diff  # GPU and CPU decoders agree to rounding


def test_cuda_array_interface_and_dlpack(client):
    class CAI:  # what CuPy / Numba arrays look like
        def __init__(self, t):
            self.t = t
            self.__cuda_array_interface__ = t.__cuda_array_interface__

    class DL:
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, stream=None):
            return self.t.__dlpack__(stream=stream)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    toks, ch = _chunk(32, 700)
    kv = torch.randn(L16.shape(32), device="cuda").half()
    torch.cuda.synchronize()
    client.put(MODEL, toks, ch, L16, CAI(kv))
    out = torch.zeros_like(kv)
    torch.cuda.synchronize()
    client.get(MODEL, toks, ch, L16, out=CAI(out))
    assert torch.equal(out, kv)
    out2 = torch.zeros_like(kv)
    client.get(MODEL, toks, ch, L16, out=DL(out2))
    assert torch.equal(out2, kv)
    toks2, ch2 = _chunk(32, 800)
    kvb = torch.randn(LBF.shape(32), device="cuda").to(torch.bfloat16)
    client.put(MODEL, toks2, ch2, LBF, DL(kvb))
    assert torch.equal(client.get(MODEL, toks2, ch2, LBF, device="cuda"), kvb)


def test_cuda_batches(client):
    toks = np.arange(900, 900 + 96, dtype=np.int32)
    chunks = kvstash.chunk_spans(MODEL, toks, [(0, 32), (32, 64)])
    kvs = [torch.randn(L16.shape(c.n_tokens), device="cuda").half() for c in chunks]
    assert list(client.put_batch(MODEL, toks, chunks, L16, kvs)) == [0, 0]
    outs = client.get_batch(MODEL, toks, chunks, L16, device="cuda")
    assert all(o.is_cuda and torch.equal(o, k) for o, k in zip(outs, kvs))
    with pytest.raises(ValueError, match="mixed"):
        client.get_batch(MODEL, toks, chunks, L16,
                         outs=[torch.empty_like(kvs[0]), torch.empty_like(kvs[1]).cpu()])
