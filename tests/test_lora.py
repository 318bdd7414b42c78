"""train/lora.py: zero-initialised adapters give the base's logits; the PEFT layout round-trips; merging is exact."""
import json

import pytest
import torch

from r1kit.model import ModelConfig, Transformer
from r1kit.train import lora


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_fresh_adapter_gives_the_base_logits_and_only_adapters_train(name):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(name)).eval()
    ids = torch.randint(0, 120, (2, 10))
    base = model(ids)
    lora.apply(model, lora.LoRAConfig(rank=4))
    torch.testing.assert_close(model(ids), base, rtol=0, atol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_adapters_off_merge_and_peft_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny")).eval()
    ids = torch.randint(0, 120, (2, 10))
    base = model(ids)
    lora.apply(model, lora.LoRAConfig(rank=4, alpha=8, targets=["q_proj", "down_proj"]))
    with torch.no_grad():
        for m in lora.layers(model).values():
            m.lora_B.normal_(std=0.05)
    adapted = model(ids)
    assert (adapted - base).abs().max() > 1e-3
    with lora.adapters_off(model):
        torch.testing.assert_close(model(ids), base, rtol=0, atol=0)
    torch.testing.assert_close(lora.merged(model)(ids), adapted, rtol=0, atol=1e-5)
    lora.save_adapter(model, tmp_path)
    conf = json.loads((tmp_path / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == 4 and conf["target_modules"] == ["down_proj", "q_proj"]
    from safetensors.torch import load_file
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    fresh = Transformer(ModelConfig.from_name("tiny")).eval()
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" not in k})
    lora.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(ids), adapted, rtol=0, atol=0)


def test_peft_reads_our_adapter(tmp_path):
    """PEFT itself (optional oracle) loads the adapter onto the transformers model and gives our logits."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from r1kit.checkpoint.hf import save_model
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny")).eval()
    save_model(model, tmp_path / "base")
    lora.apply(model, lora.LoRAConfig(rank=4))
    with torch.no_grad():
        for m in lora.layers(model).values():
            m.lora_B.normal_(std=0.05)
    lora.save_adapter(model, tmp_path / "adapter")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", torch_dtype=torch.float32)
    hf = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids = torch.randint(0, 120, (1, 9))
    torch.testing.assert_close(hf(ids).logits, model(ids), rtol=0, atol=1e-4)
