"""Fit before you run: an estimate of a training configuration's peak memory, checked before the first step.

    plan = estimate(cfg, rl=RLShape(prompts=8, group=8, prompt_tokens=256, new_tokens=4096), micro_batch_tokens=16384)
    print(plan.table())          # weights, grads, optimiser, reference, activations, logits chunk, engine KV
    check(plan, "cpu")           # raises R1kitError naming what to change when it does not fit

The figures are bytes from the shapes alone: parameters from model.params, activations per token and layer from
the tensors a block saves for its backward (all of them without checkpointing; the block inputs plus one block's
worth with it), the engine's KV cache from its rows and length. They are estimates of the dominant terms (within
tens of percent of measured peaks, see docs/BENCHMARKS.md), not an allocator simulation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

GiB = 1 << 30


@dataclass
class RLShape:
    prompts: int = 16
    group: int = 8
    prompt_tokens: int = 256
    new_tokens: int = 1024

    @property
    def rows(self) -> int:
        return self.prompts * self.group


@dataclass
class Plan:
    parts: dict[str, float] = field(default_factory=dict)  # name -> bytes
    checkpointing: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def table(self) -> str:
        w = max(map(len, self.parts)) + 2
        lines = [f"{k:<{w}}{v / GiB:8.2f} GiB" for k, v in self.parts.items()]
        lines.append(f"{'total':<{w}}{self.total / GiB:8.2f} GiB" + ("  (activation checkpointing on)"
                                                                    if self.checkpointing else ""))
        return "\n".join(lines + self.notes)


def _act_floats_per_token_layer(c) -> float:
    """Floats a block keeps for its backward, per token (attention + MLP or the activated experts)."""
    if c.mla:
        attn = 2 * c.dim + c.n_heads * (c.qk_head_dim * 2 + c.v_head_dim * 2) + c.kv_lora_rank * 2 + \
            (c.q_lora_rank or 0) * 2
    else:
        attn = 2 * c.dim + 3 * c.n_heads * c.head_dim + 2 * c.n_kv_heads * c.head_dim
    if c.n_routed_experts:
        mlp = 4 * c.moe_inter_dim * (c.n_activated_experts + c.n_shared_experts) + 2 * c.dim + c.n_routed_experts
    else:
        mlp = 4 * c.inter_dim + 2 * c.dim
    return attn + mlp


def kv_bytes_per_token(c, dtype_bytes: int) -> float:
    per_layer = (c.kv_lora_rank + c.qk_rope_head_dim) if c.mla else 2 * c.n_kv_heads * c.head_dim
    return per_layer * c.n_layers * dtype_bytes


def estimate(c, *, device: str = "cpu", micro_batch_tokens: int = 8192, checkpointing: str = "auto",
             lora_rank: int = 0, beta: float = 0.0, rl: RLShape | None = None, budget: float | None = None,
             world_size: int = 1) -> Plan:
    """The peak bytes per rank of one training step of model config `c` (fp32 on CPU, bf16 compute + fp32 master
    on CUDA). With world_size > 1, FSDP2 shards weights, gradients, optimiser state and the reference; each rank
    keeps one full inference copy for its engine and rolls out B / world_size prompts."""
    from r1kit.model.params import count_params
    from r1kit.train.logprobs import chunk_rows

    P = count_params(c).total
    act_b = 2 if device == "cuda" else 4
    trainable = P if not lora_rank else _lora_params(c, lora_rank)
    W = max(1, world_size)
    parts = {"weights": P * 4.0 / W}
    parts["gradients"] = trainable * 4.0 / W
    parts["optimiser (AdamW)"] = trainable * 8.0 / W
    if lora_rank:
        parts["adapters"] = trainable * 4.0 / W
    if beta and not lora_rank:
        parts["reference model"] = P * 4.0 / W  # with LoRA the reference is the base with adapters off
    if W > 1:
        # train.dist.gathered holds every block's full weights through an optimiser step's micro-batches (ranks run
        # different numbers of them), so parameters are sharded at rest, not during the pass
        parts["gathered weights (FSDP2, during a pass)"] = P * act_b
        rl = RLShape(max(1, rl.prompts // W), rl.group, rl.prompt_tokens, rl.new_tokens) if rl else None
    tokens = micro_batch_tokens
    if rl is not None:
        seq = rl.prompt_tokens + rl.new_tokens
        tokens = max(seq, micro_batch_tokens) if micro_batch_tokens > 0 else rl.rows * seq
        tokens = min(tokens, rl.rows * seq)
    full = tokens * c.n_layers * _act_floats_per_token_layer(c) * act_b
    ckpt_acts = tokens * c.dim * c.n_layers * 4 + tokens * _act_floats_per_token_layer(c) * act_b
    parts["logits chunk"] = chunk_rows(c.vocab_size) * c.vocab_size * 4.0 * 3
    if rl is not None:
        seq = rl.prompt_tokens + rl.new_tokens
        parts["engine KV cache"] = rl.rows * seq * kv_bytes_per_token(c, act_b)
        if device == "cpu":
            parts["engine packed weights"] = P * 4.0  # the CPU kernels' repacked Linears
        if lora_rank or W > 1:  # the engine's own full weights: LoRA merged, or gathered from the shards
            parts["rollout copy (full weights)"] = P * (act_b if W > 1 else 4.0) * (2 if lora_rank and W > 1 else 1)
        parts["rollout batch"] = rl.rows * seq * 8.0 * 4  # ids, masks, old/ref log-probs
    # auto: recompute blocks only when keeping every activation would take over half the free memory (the
    # recompute costs about one more forward, ~30% of a training pass)
    avail = budget if budget is not None else available_bytes(device)
    on = checkpointing == "on" or (checkpointing == "auto" and sum(parts.values()) + full > 0.5 * avail)
    parts["activations (micro-batch)"] = ckpt_acts if on else full
    return Plan(parts, on)


def _lora_params(c, r: int) -> int:
    """Adapter parameters on q/k/v/o and the MLP projections of every layer (dense shapes)."""
    hd = c.qk_head_dim if c.mla else c.head_dim
    attn = r * (c.dim + c.n_heads * hd) * 2 + r * (c.dim + c.n_kv_heads * c.head_dim) * 2 if not c.mla else \
        r * (c.dim + c.n_heads * hd) * 2
    mlp = 3 * r * (c.dim + (c.moe_inter_dim if c.n_routed_experts else c.inter_dim)) * \
        (c.n_routed_experts + c.n_shared_experts if c.n_routed_experts else 1)
    return c.n_layers * (attn + mlp)


def big_pass(model, tokens: int) -> bool:
    """Whether a training pass over `tokens` positions keeps more than 1 GiB of block inputs alone (then freed
    activations are worth handing back to the kernel, engine.cpu.large_blocks_to_the_kernel)."""
    c = getattr(model, "cfg", None) or model.model.cfg
    return tokens * c.dim * c.n_layers * 4 > (1 << 30)


def available_bytes(device: str = "cpu") -> float:
    """Free device memory: CUDA's free bytes, or on CPU MemAvailable (the smaller of it and a cgroup limit)."""
    if device == "cuda":
        import torch
        return float(torch.cuda.mem_get_info()[0])
    avail = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max":
            avail = min(avail or float("inf"), int(limit))
    except OSError:
        pass
    return float(avail or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check(plan: Plan, device: str = "cpu", available: float | None = None) -> None:
    """Raise R1kitError with what to change when the plan does not fit the device's free memory."""
    from r1kit.errors import R1kitError

    avail = available if available is not None else available_bytes(device)
    if plan.total <= avail:
        return
    biggest = max(plan.parts, key=plan.parts.get)
    hints = []
    if biggest.startswith("activations"):
        hints.append("lower micro_batch_tokens" + ("" if plan.checkpointing else " or turn grad_checkpointing on"))
    if any(k in plan.parts for k in ("gradients", "optimiser (AdamW)")) and "adapters" not in plan.parts:
        hints.append("train LoRA adapters (--lora-rank 16) instead of every weight")
    if "engine KV cache" in plan.parts:
        hints.append("fewer prompts per step or a smaller group")
    raise R1kitError(f"this configuration needs about {plan.total / GiB:.1f} GiB ({biggest}: "
                     f"{plan.parts[biggest] / GiB:.1f} GiB) but {avail / GiB:.1f} GiB is free on {device}; "
                     + "; ".join(hints))


def configure_checkpointing(model, cfg) -> Plan:
    """Set model.grad_checkpointing from cfg.grad_checkpointing ("on", "off", "auto": on when the micro-batch's
    full activations would take over a quarter of free memory), and return the plan it was decided from."""
    from r1kit.errors import R1kitError

    if cfg.grad_checkpointing not in ("on", "off", "auto"):
        raise R1kitError(f"grad_checkpointing must be on, off or auto, not {cfg.grad_checkpointing!r}")
    from r1kit.train import lora
    device = next(model.parameters()).device.type
    lr = model.lora_config.rank if lora.is_lora(model) else 0
    rl = RLShape(cfg.prompts_per_step, cfg.group_size, 256, cfg.max_new_tokens) if hasattr(cfg, "group_size") else None
    plan = estimate(model.cfg, device=device, micro_batch_tokens=cfg.micro_batch_tokens,
                    checkpointing=cfg.grad_checkpointing, lora_rank=lr, beta=getattr(cfg, "beta", 0.0), rl=rl)
    model.grad_checkpointing = plan.checkpointing
    return plan


def plan(model: str, prompts_per_step: int = 16, group_size: int = 8, prompt_tokens: int = 256,
         max_new_tokens: int = 1024, micro_batch_tokens: int = 8192, grad_checkpointing: str = "auto",
         lora_rank: int = 0, beta: float = 0.001, device: str = "cpu", memory_gib: float = 0.0,
         sft: bool = False, world_size: int = 1) -> dict:
    """Estimate the peak memory of a GRPO (or SFT) step before running it, and say whether it fits.

    Args:
        model: a preset name (e.g. r1-distill-qwen-7b), an HF checkpoint folder or a .gguf file.
        prompts_per_step: questions per step (B).
        group_size: samples per question (G).
        prompt_tokens: a typical prompt's length in tokens.
        max_new_tokens: the completion length limit.
        micro_batch_tokens: padded tokens per forward/backward (0 = the whole batch at once).
        grad_checkpointing: on, off or auto.
        lora_rank: LoRA adapters of this rank instead of a full fine-tune (0 = full).
        beta: the KL coefficient (> 0 keeps a reference model, unless LoRA).
        device: cpu or cuda (CUDA: bf16 compute with fp32 master weights).
        memory_gib: the memory to plan against (0 = what is free on this machine's device).
        sft: plan a supervised step instead (no reference, no engine).
        world_size: processes (GPUs) sharing the step under torchrun + FSDP2; figures are per rank.
    """
    from r1kit.cli import resolve_config
    from r1kit.errors import R1kitError

    if device not in ("cpu", "cuda"):
        raise R1kitError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not memory_gib:
        import torch
        if not torch.cuda.is_available():
            raise R1kitError("--device cuda on a machine without CUDA: give --memory-gib (e.g. 80 for an H100)")
    for name, v in (("prompts_per_step", prompts_per_step), ("group_size", group_size),
                    ("max_new_tokens", max_new_tokens)):
        if v < 1:
            raise R1kitError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    cfg = resolve_config(model)
    budget = memory_gib * GiB if memory_gib else available_bytes(device)
    rl = None if sft else RLShape(prompts_per_step, group_size, prompt_tokens, max_new_tokens)
    p = estimate(cfg, device=device, micro_batch_tokens=micro_batch_tokens, checkpointing=grad_checkpointing,
                 lora_rank=lora_rank, beta=0.0 if sft else beta, rl=rl, budget=budget, world_size=world_size)
    print(f"{model}: {'SFT' if sft else 'GRPO'} step, {device}" + (f" x {world_size} ranks (per rank)"
                                                                   if world_size > 1 else "") + ", "
          + ("" if sft else f"{prompts_per_step} x {group_size} x ({prompt_tokens} + {max_new_tokens}) tokens, ")
          + f"micro-batches of {micro_batch_tokens} tokens" + (f", LoRA rank {lora_rank}" if lora_rank else ""))
    print(p.table())
    fits = p.total <= budget
    print(f"{'fits' if fits else 'does NOT fit'} in {budget / GiB:.1f} GiB")
    if not fits:
        try:
            check(p, device, budget)
        except R1kitError as e:
            print(str(e).split("; ", 1)[-1])
    return {"total_gib": p.total / GiB, "fits": fits, "checkpointing": p.checkpointing}
