"""kvstash.model_id: the fingerprint libkvstash computes (kvs_model_id_compute),
equal to the reference engine's for SmolLM2 and different for any change."""
import os

import pytest

import kvstash

LAY = kvstash.Layout(30, 3, 64, "f16", rope_theta=100000.0)
ARGS = dict(arch="llama", layout=LAY, n_embd=576, n_heads=9, n_ff=1536, n_vocab=49152,
            norm_eps=1e-5)


def test_model_id_fields(tmp_path):
    w = tmp_path / "w.bin"
    w.write_bytes(b"weights" * 1000)
    a = kvstash.model_id(weights=str(w), **ARGS)
    assert len(a) == 16 and a == kvstash.model_id(weights=w, **ARGS)
    # every input changes it
    for k, v in [("arch", "llama|vllm"), ("n_embd", 577), ("n_heads", 8), ("n_ff", 1537),
                 ("n_vocab", 49153), ("norm_eps", 1e-6),
                 ("layout", kvstash.Layout(30, 3, 64, "f16", rope_theta=10000.0)),
                 ("layout", kvstash.Layout(30, 3, 64, "bf16", rope_theta=100000.0))]:
        assert kvstash.model_id(weights=w, **dict(ARGS, **{k: v})) != a, k
    w2 = tmp_path / "w2.bin"
    w2.write_bytes(b"weights" * 999 + b"weightz")
    assert kvstash.model_id(weights=w2, **ARGS) != a
    # a 16-byte hash stands for the weights
    h = bytes(range(16))
    assert kvstash.model_id(weights=h, **ARGS) == kvstash.model_id(weights=bytearray(h), **ARGS)
    with pytest.raises(ValueError):
        kvstash.model_id(weights=b"short", **ARGS)
    with pytest.raises(FileNotFoundError):
        kvstash.model_id(weights=tmp_path / "none", **ARGS)


def test_model_id_directory(tmp_path):
    d = tmp_path / "hf"
    (d / "sub").mkdir(parents=True)
    (d / "a.safetensors").write_bytes(b"A" * 100)
    (d / "sub" / "b.safetensors").write_bytes(b"B" * 50)
    a = kvstash.model_id(weights=d, **ARGS)
    # a file's name is part of it (moving bytes between files changes the id)
    (d / "sub" / "b.safetensors").rename(d / "sub" / "c.safetensors")
    assert kvstash.model_id(weights=d, **ARGS) != a
    (d / "sub" / "c.safetensors").rename(d / "sub" / "b.safetensors")
    assert kvstash.model_id(weights=d, **ARGS) == a
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        kvstash.model_id(weights=tmp_path / "empty", **ARGS)


def test_model_id_matches_the_reference_engine():
    gguf = os.environ.get("KVS_MODEL_PATH") or os.path.expanduser(
        "~/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(gguf):
        pytest.skip("no SmolLM2 GGUF")
    # model/model.c's id of SmolLM2-135M-Instruct Q4_1 (kvs-demo prints it)
    assert kvstash.model_id(weights=gguf, **ARGS).hex() == "2f40278f227ce6508c73c7ed5540f238"
