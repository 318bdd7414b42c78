import pytest
import torch
import torch.nn.functional as F

from r1kit.model import PRESETS, ModelConfig, Transformer, count_params


@pytest.mark.parametrize("name,total", [
    ("smollm2-135m", 134515008),
    ("r1-distill-qwen-1.5b", 1777088000),
    ("deepseek-v3-671b", 671026419200),
])
def test_param_counts_match_published(name, total):
    assert count_params(ModelConfig.from_name(name)).total == total


def test_deepseek_v3_activated_mtp_and_cache():
    c = count_params(ModelConfig.from_name("deepseek-v3-671b"))
    assert c.activated == 37552297472
    assert c.activated - c.embedding == 36625618432
    assert c.mtp == 11610068224
    assert c.kv_cache_bytes_per_token == 70272


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("tiny")])
def test_formula_equals_instantiated_tiny_models(name):
    cfg = ModelConfig.from_name(name)
    model = Transformer(cfg)
    n_mtp = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mtp."))
    assert model.num_params() - n_mtp == count_params(cfg).total
    assert n_mtp == count_params(cfg).mtp


@pytest.mark.parametrize("name", ["r1-distill-qwen-7b", "r1-distill-llama-8b", "r1-distill-qwen-14b",
                                  "r1-distill-qwen-32b", "r1-distill-llama-70b", "qwen2.5-math-1.5b"])
def test_distill_presets_build_on_meta(name):
    cfg = ModelConfig.from_name(name)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert model.num_params() == count_params(cfg).total


def test_per_token_loss_is_negative_logprob():
    model = Transformer(ModelConfig.from_name("tiny"))
    ids = torch.randint(0, 128, (2, 9))
    tgt = torch.randint(0, 128, (2, 9))
    tgt[0, :3] = -100
    nll = model(ids, tgt, reduction="none")
    logp = F.log_softmax(model(ids).float(), -1)
    ref = -logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
    assert nll.shape == (2, 9)
    assert torch.allclose(nll[tgt != -100], ref[tgt != -100], atol=1e-6)
    assert (nll[tgt == -100] == 0).all()
    assert torch.allclose(model(ids, tgt), nll[tgt != -100].mean(), atol=1e-6)


def test_causal_and_last_only():
    model = Transformer(ModelConfig.from_name("tiny-qwen2"))
    ids = torch.randint(0, 128, (1, 12))
    full = model(ids)
    # a prefix's logits do not depend on later tokens
    assert torch.allclose(model(ids[:, :7]), full[:, :7], atol=1e-5)
    assert torch.allclose(model(ids, last_only=True)[:, 0], full[:, -1], atol=1e-6)


def test_trainable_step_reduces_loss():
    model = Transformer(ModelConfig.from_name("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 128, (4, 16))
    losses = []
    for _ in range(20):
        loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown arch"):
        ModelConfig(arch="gpt2")
    with pytest.raises(ValueError, match="multiple"):
        ModelConfig(n_heads=6, n_kv_heads=4, dim=48)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.from_name("nope")


def test_llama3_rope_scaling_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from r1kit.model.model import rope_inv_freq
    cfg = ModelConfig.from_name("r1-distill-llama-8b")
    hf_cfg = transformers.LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0,
                                      rope_scaling=dict(cfg.rope_scaling), max_position_embeddings=131072)
    ref, scale = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    ours, our_scale = rope_inv_freq(cfg, 128)
    assert torch.allclose(ours, ref.float(), rtol=1e-6)
    assert our_scale == scale
