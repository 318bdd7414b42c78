"""ModelConfig: one typed, serialisable config for every decoder r1kit builds, plus a table of named presets.

The same dataclass covers the dense Llama/Qwen2 decoders (R1-Distill students) and DeepSeek-V3 (MLA attention,
DeepSeekMoE, MTP). A feature is on when its size is non-zero: `kv_lora_rank > 0` selects MLA, `n_routed_experts > 0`
selects MoE in layers `>= first_k_dense`, `n_mtp > 0` adds the multi-token-prediction module.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

ARCHS = ("llama", "qwen2", "deepseek_v3")


@dataclass
class ModelConfig:
    arch: str = "llama"  # "llama" | "qwen2" | "deepseek_v3": names the HF checkpoint layout
    vocab_size: int = 32000
    dim: int = 4096  # hidden size
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 0  # 0 = n_heads (MHA); fewer = GQA
    head_dim: int = 0  # 0 = dim // n_heads
    inter_dim: int = 11008  # dense SwiGLU width
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # the HF dict as is: {"rope_type": "llama3"|"yarn", "factor": ..., ...}
    max_seq_len: int = 4096
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 puts a bias on q, k and v
    bos_id: int | None = None
    eos_id: int | None = None
    # MLA (DeepSeek-V3 attention); kv_lora_rank = 0 means ordinary GQA attention
    q_lora_rank: int = 0  # 0 = one q_proj, no low-rank q
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # DeepSeekMoE; n_routed_experts = 0 means every layer is dense
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    n_activated_experts: int = 0
    moe_inter_dim: int = 0
    n_group: int = 1
    topk_group: int = 1
    route_scale: float = 1.0
    first_k_dense: int = 0
    # Multi-token prediction modules (DeepSeek-V3 uses 1)
    n_mtp: int = 0
    init_std: float = 0.02
    extra: dict = field(default_factory=dict)  # unknown HF config keys, kept so a save round-trips them

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    # -- derived views ------------------------------------------------------------------------------------------
    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def moe(self) -> bool:
        return self.n_routed_experts > 0

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.mla else self.head_dim

    def is_moe_layer(self, i: int) -> bool:
        return self.moe and i >= self.first_k_dense

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_name(cls, name: str) -> "ModelConfig":
        key = name.lower()
        key = ALIASES.get(key, key)
        if key not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return cls(**PRESETS[key])

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def __str__(self) -> str:
        return json.dumps(self.to_dict())


# --------------------------------------------------------------------------------------------------------------
# Named presets. Shapes follow each model's published config.json.
_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
_V3_YARN = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0,
            "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}

PRESETS: dict[str, dict] = {
    # Tiny presets: tests and the CPU demo. Vocab 128 fits the built-in character tokenizer.
    "tiny": dict(arch="llama", vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, inter_dim=176,
                 max_seq_len=512, tie_embeddings=True, norm_eps=1e-6),
    "tiny-qwen2": dict(arch="qwen2", vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, inter_dim=176,
                       max_seq_len=512, qkv_bias=True, norm_eps=1e-6),
    "tiny-moe": dict(arch="deepseek_v3", vocab_size=128, dim=64, n_layers=3, n_heads=4, inter_dim=176,
                     max_seq_len=512, norm_eps=1e-6, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16,
                     qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, n_shared_experts=1,
                     n_activated_experts=2, moe_inter_dim=48, n_group=2, topk_group=1, route_scale=2.5,
                     first_k_dense=1, n_mtp=1),
    "smollm2-135m": dict(arch="llama", vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
                         inter_dim=1536, norm_eps=1e-5, rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True,
                         bos_id=1, eos_id=2),
    # The six R1-Distill students (their bases' shapes, with the Distill repos' config.json values).
    "r1-distill-qwen-1.5b": dict(arch="qwen2", vocab_size=151936, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2,
                                 inter_dim=8960, norm_eps=1e-6, rope_theta=10000.0, max_seq_len=131072,
                                 qkv_bias=True, bos_id=151646, eos_id=151643),
    "r1-distill-qwen-7b": dict(arch="qwen2", vocab_size=152064, dim=3584, n_layers=28, n_heads=28, n_kv_heads=4,
                               inter_dim=18944, norm_eps=1e-6, rope_theta=10000.0, max_seq_len=131072,
                               qkv_bias=True, bos_id=151646, eos_id=151643),
    "r1-distill-llama-8b": dict(arch="llama", vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                                inter_dim=14336, norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
                                max_seq_len=131072, bos_id=128000, eos_id=128001),
    "r1-distill-qwen-14b": dict(arch="qwen2", vocab_size=152064, dim=5120, n_layers=48, n_heads=40, n_kv_heads=8,
                                inter_dim=13824, norm_eps=1e-5, rope_theta=1000000.0, max_seq_len=131072,
                                qkv_bias=True, bos_id=151646, eos_id=151643),
    "r1-distill-qwen-32b": dict(arch="qwen2", vocab_size=152064, dim=5120, n_layers=64, n_heads=40, n_kv_heads=8,
                                inter_dim=27648, norm_eps=1e-5, rope_theta=1000000.0, max_seq_len=131072,
                                qkv_bias=True, bos_id=151646, eos_id=151643),
    "r1-distill-llama-70b": dict(arch="llama", vocab_size=128256, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                                 inter_dim=28672, norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
                                 max_seq_len=131072, bos_id=128000, eos_id=128001),
    # DeepSeek-V3 / DeepSeek-R1 (671B total, 37B activated)
    "deepseek-v3-671b": dict(arch="deepseek_v3", vocab_size=129280, dim=7168, n_layers=61, n_heads=128,
                             inter_dim=18432, norm_eps=1e-6, rope_theta=10000.0, rope_scaling=_V3_YARN,
                             max_seq_len=163840, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                             qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256, n_shared_experts=1,
                             n_activated_experts=8, moe_inter_dim=2048, n_group=8, topk_group=4, route_scale=2.5,
                             first_k_dense=3, n_mtp=1, bos_id=0, eos_id=1, init_std=0.006),
}

# The bases the students were distilled from share their shapes.
ALIASES = {
    "qwen2.5-math-1.5b": "r1-distill-qwen-1.5b", "qwen2.5-math-7b": "r1-distill-qwen-7b",
    "llama-3.1-8b": "r1-distill-llama-8b", "qwen2.5-14b": "r1-distill-qwen-14b",
    "qwen2.5-32b": "r1-distill-qwen-32b", "llama-3.3-70b-instruct": "r1-distill-llama-70b",
    "deepseek-r1": "deepseek-v3-671b", "deepseek-v3": "deepseek-v3-671b",
}


def load_config_file(path: str | Path) -> ModelConfig:
    """A ModelConfig from an HF `config.json` (see checkpoint.hf for the key mapping)."""
    from r1kit.checkpoint.hf import config_from_hf

    return config_from_hf(json.loads(Path(path).read_text()), source=path)
