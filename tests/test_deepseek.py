"""DeepSeek-V3 parts: HF logits parity (both ways), RoPE convention, absorbed MLA decode, routing, balancing, MTP."""
import math

import pytest
import torch
import torch.nn.functional as F

from r1kit.checkpoint.hf import load_model, load_state_dict, save_model
from r1kit.model import ModelConfig, Transformer
from r1kit.model.deepseek import (LatentCache, MoE, balance_loss, expert_load_stats, moe_aux_loss, moe_layers,
                                  mtp_loss, route, set_aux_alpha, softmax_scale, update_moe_bias)
from r1kit.model.model import apply_rope_interleaved, rope_cos_sin, rope_inv_freq

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine is small and shared: one thread avoids oversubscription (10-50x slower tiny matmuls).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


YARN = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 64, "beta_fast": 32.0,
        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}


def hf_config(yarn: bool, k: int = 3, mtp: int = 0):
    """The tiny config of transformers' DeepSeek-V3 tests, with 3 experts per token (not 8: 1 kept group holds 4)."""
    kw = dict(vocab_size=99, hidden_size=32, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8,
              routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=16, v_head_dim=32,
              qk_nope_head_dim=32, n_group=2, topk_group=1, num_experts_per_tok=k, first_k_dense_replace=1,
              max_position_embeddings=512, num_nextn_predict_layers=mtp, attn_implementation="eager")
    if yarn:  # factor 40 = max_position_embeddings / original, so every reading of "factor" agrees
        kw["max_position_embeddings"] = 40 * 64
        kw["rope_parameters"] = {"rope_theta": 10000.0, **YARN}
    return transformers.DeepseekV3Config(**kw)


def spread(named_params, bias_low: float):
    """Non-trivial norms, a router that discriminates, and a random non-zero selection bias >= bias_low."""
    with torch.no_grad():
        for n, p in named_params:
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif n.endswith("mlp.gate.weight"):
                p.normal_(std=0.5)
            elif n.endswith("e_score_correction_bias"):
                p.uniform_(bias_low, 0.3)


def hf_router_choice(hf, x):
    """(weights, indices) of HF's router for layer 1 on hidden states x (N, D), indices sorted per token."""
    _, w, idx = hf.model.layers[1].mlp.gate(x)
    idx, order = idx.sort(-1)
    return w.gather(1, order), idx


def ours_router_choice(model, x):
    w, idx, _ = model.layers[1].mlp.gate(x)
    idx, order = idx.sort(-1)
    return w.gather(1, order), idx


# --------------------------------------------------------------------------------------------------------------
# 1. logits parity with transformers

@pytest.mark.parametrize("yarn", [False, True])
def test_hf_to_r1kit_logits_parity(tmp_path, yarn):
    hf = transformers.DeepseekV3ForCausalLM(hf_config(yarn)).eval()
    # Biased scores stay positive (sigmoid > 0, bias >= 0), so HF versions that mask dropped groups with 0.0 and
    # r1kit's -inf pick the same experts; the -inf choice itself is pinned in test_group_mask_is_minus_inf.
    spread(hf.named_parameters(), 0.0)
    spread(hf.named_buffers(), 0.0)
    assert hf.model.layers[1].mlp.gate.e_score_correction_bias.abs().min() > 0
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert (ours.cfg.rope_scaling is not None) == yarn
    assert ours.layers[0].self_attn.scale == pytest.approx(hf.model.layers[0].self_attn.scaling, rel=1e-12)
    ids = torch.randint(0, 99, (2, 23))
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids)).abs().max().item()
        x = torch.randn(64, 32)
        (hw, hi), (ow, oi) = hf_router_choice(hf, x), ours_router_choice(ours, x)
    print(f"HF -> r1kit, yarn={yarn}: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4
    assert torch.equal(hi, oi) and torch.allclose(hw, ow, atol=1e-6)


@pytest.mark.parametrize("yarn", [False, True])
def test_r1kit_to_hf_logits_parity_and_mtp_keys_ignored(tmp_path, yarn):
    from r1kit.checkpoint.hf import config_from_hf

    d = hf_config(yarn, mtp=1).to_dict()
    cfg = config_from_hf(d)
    assert cfg.n_mtp == 1 and cfg.is_moe_layer(cfg.n_layers)
    ours = Transformer(cfg).eval()
    spread(ours.named_parameters(), 0.0)
    save_model(ours, tmp_path)
    saved = load_state_dict(tmp_path)
    assert "model.layers.2.eh_proj.weight" in saved and "model.layers.2.shared_head.head.weight" in saved
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(hf).__name__ == "DeepseekV3ForCausalLM" and len(hf.model.layers) == 2  # MTP layer 2 ignored
    ids = torch.randint(0, 99, (3, 17))
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids)).abs().max().item()
    print(f"r1kit -> HF, yarn={yarn}: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4


def test_hf_attention_scale_and_yarn_constants():
    v3 = ModelConfig.from_name("deepseek-v3-671b")
    assert softmax_scale(v3) == pytest.approx(0.1352337789, abs=1e-10)  # 192^-0.5 * (0.1 ln 40 + 1)^2
    assert softmax_scale(v3.replace(rope_scaling=None)) == pytest.approx(192 ** -0.5)
    inv, attn_factor = rope_inv_freq(v3, 64)
    base = 1.0 / 10000 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    ratio = inv.double() / base
    assert attn_factor == 1.0
    assert torch.allclose(ratio[:11], torch.ones(11, dtype=torch.float64))  # low = 10, high = 23
    assert ratio[11].item() == pytest.approx(0.925, abs=1e-6) and ratio[16].item() == pytest.approx(0.55, abs=1e-6)
    assert ratio[22].item() == pytest.approx(0.1, abs=1e-6)
    assert torch.allclose(ratio[23:], torch.full((9,), 1 / 40, dtype=torch.float64))


def test_rope_interleave_matches_hf_up_to_permutation():
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (apply_rotary_pos_emb,
                                                                      apply_rotary_pos_emb_interleave)
    cfg = ModelConfig.from_name("tiny-moe").replace(qk_rope_head_dim=16, rope_scaling=YARN, max_seq_len=2560)
    inv, scale = rope_inv_freq(cfg, 16)
    pos = torch.arange(9)
    cos, sin = rope_cos_sin(inv, scale, pos, torch.float32)  # (T, 8)
    q, k = torch.randn(2, 3, 9, 16), torch.randn(2, 3, 9, 16)
    ours_q, ours_k = apply_rope_interleaved(q, cos, sin), apply_rope_interleaved(k, cos, sin)
    hcos, hsin = torch.cat([cos, cos], -1)[None], torch.cat([sin, sin], -1)[None]  # HF: (B, T, 2 * D/2)
    hq, hk = apply_rotary_pos_emb_interleave(q, k, hcos, hsin)
    perm = torch.cat([torch.arange(0, 16, 2), torch.arange(1, 16, 2)])  # HF's channel order [x0, x2, .., x1, ..]
    assert torch.allclose(hq, ours_q[..., perm], atol=1e-6)
    dots = torch.einsum("bhtd,bhsd->bhts", ours_q, ours_k)
    assert torch.allclose(dots, torch.einsum("bhtd,bhsd->bhts", hq, hk), atol=1e-5)
    nq, nk = apply_rotary_pos_emb(q, k, hcos, hsin)  # neox rotate_half without the permutation: wrong
    assert not torch.allclose(dots, torch.einsum("bhtd,bhsd->bhts", nq, nk), atol=1e-2)


# --------------------------------------------------------------------------------------------------------------
# 2. absorbed-weight decode through the latent cache == full-sequence training path

def tiny_model(**kw):
    cfg = ModelConfig.from_name("tiny-moe").replace(**kw)
    model = Transformer(cfg).eval()
    spread(model.named_parameters(), -0.3)
    return model


@pytest.mark.parametrize("q_lora", [48, 0])
def test_absorbed_decode_matches_full_sequence(q_lora):
    model = tiny_model(q_lora_rank=q_lora, rope_scaling=YARN, max_seq_len=2560)
    ids = torch.randint(0, 128, (2, 12))
    cache = LatentCache(model.cfg, batch_size=2, max_len=16)
    with torch.no_grad():
        full = model(ids)  # (B, T, V) naive path, causal
        steps = [model(ids[:, :7], positions=torch.arange(7), cache=cache)]
        for t in range(7, 12):
            steps.append(model(ids[:, t:t + 1], positions=torch.tensor([t]), cache=cache))
    got = torch.cat(steps, dim=1)
    diff = (got - full).abs().max().item()
    print(f"absorbed decode vs naive: max |diff| = {diff:.2e}")
    assert diff <= 1e-5 and cache.pos == 12
    # the cache holds the normalised latent and the post-RoPE shared key (layer 0 recomputed by hand)
    attn = model.layers[0].self_attn
    x = model.layers[0].input_layernorm(model.embed_tokens(ids))
    c_kv, k_pe = attn.kv_a_proj_with_mqa(x).split([attn.rank, attn.rope_dim], -1)
    cos, sin = model.rope(torch.arange(12), torch.float32)
    assert torch.allclose(cache.kv[0, :, :12], attn.kv_a_layernorm(c_kv), atol=1e-6)
    assert torch.allclose(cache.pe[0, :, :12], apply_rope_interleaved(k_pe[:, None], cos, sin)[:, 0], atol=1e-6)
    assert cache.kv.shape[-1] + cache.pe.shape[-1] == 40  # 32 + 8 values per token and layer


def test_chunked_prefill_with_start_pos():
    model = tiny_model()
    ids = torch.randint(0, 128, (2, 11))
    with torch.no_grad():
        full = model(ids)
        for mask in (False, True):
            cache = LatentCache(model.cfg, 2, 11)
            a = model(ids[:, :4], positions=torch.arange(4), cache=cache)
            # chunk at start_pos 4: implicit end-aligned causal mask, or the engine's explicit (T, S) bool mask
            m = torch.ones(7, 11, dtype=torch.bool).tril(4) if mask else None
            b = model(ids[:, 4:], positions=torch.arange(4, 11), cache=cache, attn_mask=m)
            assert (torch.cat([a, b], 1) - full).abs().max().item() <= 1e-5


# --------------------------------------------------------------------------------------------------------------
# 5. routing

def reference_gate(scores_logits, bias, k, n_groups, topk_groups, route_scale):
    """DeepSeek-V3 inference/model.py `Gate.forward` (sigmoid, with bias), transcribed."""
    scores = scores_logits.sigmoid()
    original_scores = scores
    scores = scores + bias
    if n_groups > 1:
        scores = scores.view(scores.size(0), n_groups, -1)
        group_scores = scores.topk(2, dim=-1)[0].sum(dim=-1)
        indices = group_scores.topk(topk_groups, dim=-1)[1]
        mask = scores.new_ones(scores.size(0), n_groups, dtype=bool).scatter_(1, indices, False)
        scores = scores.masked_fill_(mask.unsqueeze(-1), float("-inf")).flatten(1)
    indices = torch.topk(scores, k, dim=-1)[1]
    weights = original_scores.gather(1, indices)
    weights /= weights.sum(dim=-1, keepdim=True)
    return weights * route_scale, indices


def test_router_matches_reference_gate_v3_shape():
    logits, bias = torch.randn(512, 256) * 2, torch.randn(256) * 0.5  # negative biased scores included
    w, idx, _ = route(logits, bias, 8, 8, 4, 2.5)
    rw, ridx = reference_gate(logits, bias, 8, 8, 4, 2.5)
    idx, o = idx.sort(-1)
    ridx, ro = ridx.sort(-1)
    assert torch.equal(idx, ridx) and torch.allclose(w.gather(1, o), rw.gather(1, ro), atol=1e-6)
    assert torch.allclose(w.sum(-1), torch.full((512,), 2.5))  # weights sum to route_scale
    assert ((idx // 32)[:, :, None] == torch.arange(8)).any(1).sum(-1).max() <= 4  # <= topk_group groups


def test_group_mask_is_minus_inf():
    """A kept group with a negative biased score: -inf masking (reference since 2025-02, r1kit) keeps all picks in
    the kept group; 0.0 masking (old HF remote code) would pick an expert from the dropped group."""
    s = torch.tensor([[0.9, 0.8, 0.7, 0.3, 0.5, 0.45, 0.4, 0.35]])
    bias = torch.tensor([0.0, 0.0, 0.0, -0.5, 0.0, 0.0, 0.0, 0.0])  # biased score of expert 3: -0.2
    logits = torch.logit(s)
    w, idx, _ = route(logits, bias, 4, 2, 1, 2.5)
    _, ridx = reference_gate(logits, bias, 4, 2, 1, 2.5)
    assert sorted(idx[0].tolist()) == sorted(ridx[0].tolist()) == [0, 1, 2, 3]
    zero_masked = (s + bias).masked_fill(torch.tensor([[False] * 4 + [True] * 4]), 0.0)
    assert zero_masked.topk(4).indices.max() >= 4  # the 0.0 variant leaks into the dropped group
    assert w[0].gather(0, idx[0].argsort()).tolist() == pytest.approx((s[0, :4] / s[0, :4].sum() * 2.5).tolist())


def test_bias_changes_selection_not_weights():
    logits = torch.randn(64, 8)
    bias = torch.zeros(8)
    bias[7] = 5.0  # forces expert 7 (and its group) everywhere
    w0, i0, s = route(logits, torch.zeros(8), 2, 2, 1, 1.0)
    w1, i1, _ = route(logits, bias, 2, 2, 1, 1.0)
    assert (i1 == 7).any(-1).all() and not (i0 == 7).any(-1).all()
    g = s.gather(1, i1)
    assert torch.allclose(w1, g / g.sum(-1, keepdim=True))  # unbiased sigmoid values, normalised


def test_group_score_is_sum_of_top2():
    # group 0: max 0.95 but top-2 sum 1.0; group 1: max 0.8, top-2 sum 1.6 -> group 1 wins
    s = torch.tensor([[0.95, 0.05, 0.02, 0.01, 0.8, 0.8, 0.1, 0.1]])
    _, idx, _ = route(torch.logit(s), torch.zeros(8), 2, 2, 1, 1.0)
    assert sorted(idx[0].tolist()) == [4, 5]


def test_moe_batched_equals_per_token_loop():
    cfg = ModelConfig.from_name("tiny-moe")
    moe = MoE(cfg).eval()
    spread(moe.named_parameters(), -0.3)
    x = torch.randn(3, 5, cfg.dim)
    with torch.no_grad():
        y = moe(x)
        w, idx, _ = moe.gate(x.view(-1, cfg.dim))
        ref = torch.stack([sum(w[n, j] * moe.experts[int(idx[n, j])](x.view(-1, cfg.dim)[n])
                               for j in range(cfg.n_activated_experts)) for n in range(15)])
        ref = ref + moe.shared_experts(x.view(-1, cfg.dim))
    assert torch.allclose(y.view(-1, cfg.dim), ref, atol=1e-6)
    assert moe.last_load.sum() == 15 * cfg.n_activated_experts and moe.load is None  # eval: nothing accumulated


def test_bias_stays_fp32_and_counts_as_param():
    model = Transformer(ModelConfig.from_name("tiny-moe")).to(torch.bfloat16)
    gate = model.layers[1].mlp.gate
    assert gate.e_score_correction_bias.dtype == torch.float32 and gate.weight.dtype == torch.bfloat16
    assert not gate.e_score_correction_bias.requires_grad
    model(torch.randint(0, 128, (1, 5)))  # bf16 forward runs


# --------------------------------------------------------------------------------------------------------------
# 4. balancing

def test_balance_loss_uniform_is_alpha_and_bias_update_steps():
    E, k, T = 8, 2, 16
    idx = torch.arange(T * k).remainder(E).view(1, T, k)  # every expert chosen T*k/E times
    assert balance_loss(torch.full((1, T, E), 0.3), idx, k).item() == pytest.approx(1.0)  # f_i = 1, P_i = 1/E
    model = Transformer(ModelConfig.from_name("tiny-moe")).train()
    set_aux_alpha(model, 1e-4)
    model(torch.randint(0, 128, (2, 9)), torch.randint(0, 128, (2, 9)))
    aux = moe_aux_loss(model)
    assert 0 < aux.item() < 1e-3 and aux.requires_grad
    moe = model.layers[1].mlp
    moe.load = torch.tensor([5, 1, 3, 3, 0, 9, 2, 1])  # mean 3
    before = moe.gate.e_score_correction_bias.clone()
    update_moe_bias(model, 1e-3)
    step = moe.gate.e_score_correction_bias - before
    assert torch.allclose(step, torch.tensor([-1, 1, 0, 0, 1, -1, 1, 1]) * 1e-3) and moe.load is None


def train_load_ratio(gamma: float, steps: int, B=8, T=32):
    """Train tiny-moe on Zipf-distributed tokens; return the max/min and max/mean expert load of the last 20 steps
    (per MoE layer, then the worst layer)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-moe").replace(n_mtp=0)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    zipf = 1.0 / torch.arange(1, 129).float()
    load = 0
    for step in range(steps):
        ids = torch.multinomial(zipf, B * (T + 1), replacement=True, generator=g).view(B, T + 1)
        loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if gamma:
            update_moe_bias(model, gamma)
        if step >= steps - 20:
            load = load + torch.stack([m.last_load for m in moe_layers(model)]).float()  # (layers, E)
    assert set(expert_load_stats(model)) >= {"load_max_min", "load_max_mean"}
    mx = load.max(1).values
    return (mx / load.min(1).values.clamp(min=1)).max().item(), (mx / load.mean(1)).max().item()


def test_aux_free_bias_balances_experts():
    none, biased = train_load_ratio(0.0, 200), train_load_ratio(1e-2, 200)
    print(f"200 steps, max/min (max/mean) expert load: gamma=0 {none[0]:.1f} ({none[1]:.2f}), "
          f"gamma=1e-2 {biased[0]:.1f} ({biased[1]:.2f})")
    assert biased[0] < none[0] and biased[1] < none[1]


# --------------------------------------------------------------------------------------------------------------
# MTP

def test_mtp_shapes_input_order_and_loss():
    model = tiny_model()
    mtp, D = model.mtp[0], model.cfg.dim
    assert mtp.eh_proj.weight.shape == (D, 2 * D)
    ids = torch.randint(0, 128, (2, 10))
    targets = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1)
    rope = model.rope(torch.arange(10), torch.float32)
    with torch.no_grad():  # embedding comes first: with the h half of eh_proj zeroed, h cannot matter
        mtp.eh_proj.weight[:, D:] = 0
        emb = torch.randn(2, 10, D)
        a, b = mtp(torch.randn(2, 10, D), emb, rope), mtp(torch.randn(2, 10, D), emb, rope)
    assert torch.allclose(a, b)
    # mtp_loss == CE of lm_head(shared_head.norm(MTP(h_i, emb(t_{i+1})))) against t_{i+2}
    model.train()
    x = model.embed_tokens(ids)
    for layer in model.layers:
        x = layer(x, rope)
    h = x
    got = mtp_loss(model, h, ids, targets, rope)
    out = mtp(h[:, :9], model.embed_tokens(ids[:, 1:]), (rope[0][:9], rope[1][:9]))
    logits = model.lm_head(mtp.shared_head.norm(out))
    want = F.cross_entropy(logits[:, :8].reshape(-1, logits.shape[-1]), ids[:, 2:].reshape(-1))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    main = model(ids, targets)
    total = model(ids, targets, mtp_weight=0.3)
    assert total.item() == pytest.approx(main.item() + 0.3 * got.item(), rel=1e-5)
    total.backward()
    assert mtp.hnorm.weight.grad is not None and mtp.self_attn.kv_b_proj.weight.grad.abs().sum() > 0
    assert not math.isnan(total.item())


def test_mtp_keys_and_hf_copies(tmp_path):
    model = Transformer(ModelConfig.from_name("tiny-moe"))
    keys = {k for k in model.state_dict() if k.startswith("mtp.0.")}
    for k in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight", "input_layernorm.weight",
              "post_attention_layernorm.weight", "self_attn.kv_b_proj.weight", "mlp.gate.e_score_correction_bias",
              "mlp.experts.7.down_proj.weight", "mlp.shared_experts.up_proj.weight"):
        assert f"mtp.0.{k}" in keys
    save_model(model, tmp_path)
    sd = load_state_dict(tmp_path)
    assert torch.equal(sd["model.layers.3.embed_tokens.weight"], sd["model.embed_tokens.weight"])
    assert torch.equal(sd["model.layers.3.shared_head.head.weight"], sd["lm_head.weight"])
    again = load_model(tmp_path)
    for n, t in model.state_dict().items():
        assert torch.equal(again.state_dict()[n], t), n


def test_hf_saved_checkpoint_without_mtp_weights_loads(tmp_path):
    """transformers writes num_nextn_predict_layers but no MTP weights; r1kit builds only what the file holds."""
    import transformers

    from r1kit.checkpoint.hf import load_model
    cfg = transformers.DeepseekV3Config(vocab_size=99, hidden_size=32, intermediate_size=32, moe_intermediate_size=16,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                        n_shared_experts=1, n_routed_experts=8, kv_lora_rank=16, q_lora_rank=32,
                                        qk_rope_head_dim=16, v_head_dim=32, qk_nope_head_dim=32, n_group=2,
                                        topk_group=1, num_experts_per_tok=2, first_k_dense_replace=1,
                                        max_position_embeddings=512, num_nextn_predict_layers=1)
    hf = transformers.DeepseekV3ForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert ours.cfg.n_mtp == 0
    ids = torch.randint(0, 99, (1, 9))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() <= 1e-4
