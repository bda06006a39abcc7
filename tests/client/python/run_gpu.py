"""ctest's client_python_gpu (label gpu): test_torch_gpu.py against the real
kvstashd; exits 77 (skipped) without torch or a CUDA device."""
import os
import sys

try:
    import torch
except ImportError:
    print("SKIP: torch is not installed")
    sys.exit(77)
if not torch.cuda.is_available():
    print("SKIP: no CUDA device")
    sys.exit(77)
import pytest  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("KVS_CLIENT_SERVER", "real")
os.environ["KVS_PY_GPU"] = "1"
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", os.path.join(here, "test_torch_gpu.py")]))
