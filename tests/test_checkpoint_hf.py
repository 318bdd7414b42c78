"""HF layout IO, with transformers as the logits oracle in both directions."""
import json

import pytest
import torch

from r1kit.checkpoint.hf import load_config, load_model, save_model
from r1kit.errors import R1kitError
from r1kit.model import ModelConfig, Transformer

transformers = pytest.importorskip("transformers")

HF = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
}


def tiny_hf(arch, tie):
    C, M = HF[arch]
    cfg = C(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tie, rope_theta=5000.0,
            rms_norm_eps=1e-6)
    model = M(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a dropped tensor would show
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith("bias"):
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("tie", [True, False])
def test_transformers_checkpoint_loads_in_r1kit(tmp_path, arch, tie):
    hf = tiny_hf(arch, tie)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    ids = torch.randint(0, 99, (2, 23))
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids)).abs().max().item()
    assert diff <= 1e-4
    assert ours.cfg.arch == arch and ours.cfg.tie_embeddings == tie


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("sharded", [False, True])
def test_r1kit_checkpoint_loads_in_transformers(tmp_path, arch, sharded):
    cfg = ModelConfig.from_name("tiny" if arch == "llama" else "tiny-qwen2")
    ours = Transformer(cfg).eval()
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if n.endswith("norm.weight") or n.endswith("bias"):
                p.uniform_(0.5, 1.5)
    save_model(ours, tmp_path, max_shard_bytes=50_000 if sharded else 5 * 2**30)
    assert (tmp_path / "model.safetensors.index.json").exists() == sharded
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]
    ids = torch.randint(0, 128, (2, 19))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() <= 1e-4
    # and back into r1kit, through the sharded reader
    again = load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(ids), ours(ids))


def test_save_overwrites_stale_shards(tmp_path):
    model = Transformer(ModelConfig.from_name("tiny"))
    save_model(model, tmp_path, max_shard_bytes=50_000)
    save_model(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_missing_folder(tmp_path):
    with pytest.raises(R1kitError, match="not found"):
        load_model(tmp_path / "nope")


def test_corrupt_safetensors_header(tmp_path):
    save_model(Transformer(ModelConfig.from_name("tiny")), tmp_path)
    f = tmp_path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:40] = b"{not json at all" + b"!" * 16
    f.write_bytes(bytes(data))
    with pytest.raises(R1kitError) as e:
        load_model(tmp_path)
    assert "model.safetensors" in str(e.value) and "corrupt" in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "n_embd": 8}))
    with pytest.raises(R1kitError, match=r"config.json: unsupported architecture \['GPT2LMHeadModel'\]"):
        load_config(tmp_path)


def test_shape_mismatch_names_tensor(tmp_path):
    save_model(Transformer(ModelConfig.from_name("tiny")), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(R1kitError, match="mlp"):
        load_model(tmp_path)


def test_config_roundtrip_keeps_unknown_keys(tmp_path):
    hf = tiny_hf("qwen2", False)
    hf.config.max_window_layers = 21
    hf.save_pretrained(tmp_path)
    cfg = load_config(tmp_path)
    assert cfg.extra["max_window_layers"] == 21
    save_model(load_model(tmp_path), tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["max_window_layers"] == 21
