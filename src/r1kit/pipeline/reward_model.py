"""Stage `reward_model`: a Bradley-Terry reward model on an r1kit model, and its use as an RL reward.

    rm = RewardModel(backbone)                       # any r1kit Transformer; Linear(dim, 1) on the last token
    loss, acc = bt_loss(rm(chosen_ids, chosen_len), rm(rejected_ids, rejected_len))
    score = RMScorer(rm, tok, center, scale)         # -> sigmoid((r - center) / scale) per completion

Bradley-Terry: P(chosen > rejected) = sigmoid(r_c - r_r), so the loss is -log sigmoid(r_c - r_r) averaged over
pairs. The model reads the prompt and the final summary only (the text after </think>), as R1's helpfulness RM
(docs/RECIPE.md section 3). The built-in preference set is synthetic: for the task's questions and the built-in chats,
a concise correct answer beats a verbose one (padded with repetition), a wrong one, or a reply to another prompt.
In the all-scenario RL stage the RM scores the general prompts only, and only in the last `rm_last_steps` steps:
R1 limited preference-RM reward to the final 400 of 1,700 steps because longer exposure invited reward hacking.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from r1kit.pipeline.config import file_field

FILLER = {"en": " Let me say that again in more words, just to be thorough.", "zh": "我再啰嗦几句，把刚才的话重复一遍。"}


class RewardModel(nn.Module):
    """An r1kit Transformer without its LM head in the loss: hidden state of each sequence's last token ->
    Linear(dim, 1). Hidden states come from running embed_tokens, layers and norm here (the model returns logits)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.cfg.dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # Bradley-Terry sees only differences of rewards, so the bias gets no gradient but rounding noise, which
        # Adam would scale up into a random walk; RMScorer's center does its job
        self.head.bias.requires_grad_(False)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> final-norm hidden states (B, T, dim); causal, so right padding never reaches real tokens."""
        m = self.backbone
        x = m.embed_tokens(ids)
        rope = m.rope(torch.arange(ids.shape[1], device=ids.device), x.dtype)
        for layer in m.layers:
            x = layer(x, rope)
        return m.norm(x)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) right-padded, lengths (B,) -> scalar rewards (B,) read at each sequence's last token."""
        h = self.hidden(ids)
        last = h[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # (B, dim)
        return self.head(last).squeeze(-1)


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley-Terry loss -mean(log sigmoid(r_c - r_r)) over pairs (B,), and the pair accuracy (r_c > r_r)."""
    return -F.logsigmoid(chosen - rejected).mean(), (chosen > rejected).float().mean()


def batch_ids(seqs: list[list[int]], pad_id: int, length: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded to the longest sequence (or to `length`) -> ids (B, T), lengths (B,)."""
    T = max(length, *map(len, seqs))
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return ids, torch.tensor([len(s) for s in seqs])


# --------------------------------------------------------------------------------------------------------------
# preference data

@dataclass
class Pair:
    messages: list[dict]  # the prompt (user turns)
    chosen: str  # summaries (the text after </think>)
    rejected: str
    kind: str = ""


def synthetic_pairs(task, n: int, seed: int = 0) -> list[Pair]:
    """Half from the task's questions (concise correct vs verbose / wrong), half from the built-in chats
    (reference reply vs verbose / another prompt's reply)."""
    from r1kit.pipeline.filters import summary_text
    from r1kit.tasks import chat_examples

    rng = random.Random(seed)
    chats = chat_examples()
    pairs = []
    for i in range(n):
        if i % 2 == 0:
            ex = task[rng.randrange(len(task))]
            lang = ex.meta.get("lang") or "en"
            good = summary_text(ex.answer, lang)
            if rng.random() < 0.5:
                bad, kind = good + FILLER[lang] * rng.randint(1, 3), "verbose"
            else:
                wrong = str(int(ex.answer) + rng.choice([-1, 1]) * rng.randint(1, 3)) if ex.answer.lstrip(
                    "-").isdigit() else ex.answer + "0"
                bad, kind = summary_text(wrong, lang), "wrong"
            pairs.append(Pair([{"role": "user", "content": ex.question}], good, bad, kind))
        else:
            ex = chats[rng.randrange(len(chats))]
            if rng.random() < 0.5:
                bad, kind = ex.answer + FILLER[ex.meta["lang"]] * rng.randint(1, 3), "verbose"
            else:
                other = rng.choice([c for c in chats if c.answer != ex.answer and c.meta["lang"] == ex.meta["lang"]])
                bad, kind = other.answer, "irrelevant"
            pairs.append(Pair(ex.meta["messages"], ex.answer, bad, kind))
    return pairs


def read_pairs(path: str) -> list[Pair]:
    """A jsonl of {"messages": [...prompt...], "chosen": str, "rejected": str}."""
    from r1kit.tasks import resolve_data_path

    rows = [json.loads(x) for x in resolve_data_path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    return [Pair(r["messages"], r["chosen"], r["rejected"], r.get("kind", "")) for r in rows]


def encode_pair_side(tok, messages: list[dict], summary: str) -> list[int]:
    return tok.encode_chat(messages, template="r1") + tok.encode(summary.strip())


# --------------------------------------------------------------------------------------------------------------
# training

@dataclass
class RewardModelConfig:
    pairs: str = file_field()  # preference jsonl; "" = the built-in synthetic set
    task: str = "arith-mix"  # questions for the synthetic set
    task_kw: dict = field(default_factory=dict)
    n_pairs: int = 2000
    steps: int = 150
    batch_size: int = 16  # pairs per step
    lr: float = 1e-3
    warmup: int = 10
    eval_frac: float = 0.1
    seed: int = 0


@torch.no_grad()
def pair_scores(rm: RewardModel, tok, pairs: list[Pair], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    rm.eval()
    c, r = [], []
    for i in range(0, len(pairs), batch_size):
        part = pairs[i:i + batch_size]
        seqs = [encode_pair_side(tok, p.messages, s) for p in part for s in (p.chosen, p.rejected)]
        scores = rm(*batch_ids(seqs, tok.eos_id)).view(-1, 2)
        c.append(scores[:, 0])
        r.append(scores[:, 1])
    return torch.cat(c), torch.cat(r)


def train_reward_model(rm: RewardModel, tok, pairs: list[Pair], cfg: RewardModelConfig, log=None) -> list[float]:
    """Train `rm` in place. Under torchrun it is sharded with FSDP2 (blocks, then the RM as the root, since its
    forward is what runs) and each rank scores its share of every step's pairs; its loss is divided by the whole
    batch's pair count and gradients are summed, so N ranks x B/N pairs make the update of 1 x B."""
    from r1kit.model.deepseek import update_moe_bias
    from r1kit.sft import SFTConfig, cosine_lr
    from r1kit.train import dist

    dist.setup()
    dist.shard(rm.backbone, root=rm)
    rng = random.Random(cfg.seed)
    dist.check_batch(min(cfg.batch_size, len(pairs)), "reward_model batch_size")
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    sched = SFTConfig(steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup)
    losses = []
    for step in range(cfg.steps):
        rm.train()
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, sched)
        part = rng.sample(pairs, min(cfg.batch_size, len(pairs)))  # the same on every rank
        seqs = [encode_pair_side(tok, p.messages, s) for p in part for s in (p.chosen, p.rejected)]
        mine, first = dist.share(part)
        # padded to the whole batch's longest sequence, as in one process: the MoE load counts padding too
        ids, lengths = batch_ids(seqs[2 * first:2 * (first + len(mine))], tok.eos_id, max(map(len, seqs)))
        scores = rm(ids, lengths).view(-1, 2)  # (b, 2): chosen, rejected
        margin = scores[:, 0] - scores[:, 1]
        loss = -F.logsigmoid(margin).sum() / len(part)  # this share's part of the batch mean
        opt.zero_grad(set_to_none=True)
        loss.backward()
        dist.drop_unused_grads(rm)  # the LM head and MTP get no gradient: keep AdamW off them on every world size
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step()
        if rm.backbone.cfg.moe:
            update_moe_bias(rm.backbone, 1e-3)
        totals = dist.all_sum(torch.tensor([loss.item(), float((margin > 0).sum())], dtype=torch.float64))
        losses.append(float(totals[0]))
        if log:
            log(step, {"loss": losses[-1], "accuracy": float(totals[1]) / len(part)})
    rm.eval()
    return losses


def save_rm(rm: RewardModel, tok, folder: Path, center: float, scale: float, **meta) -> Path:
    """The backbone as a model folder, the head beside it. Under torchrun every rank calls this and rank 0
    writes the weights gathered from the shards."""
    from r1kit.pipeline import modelio
    from r1kit.train import dist

    full = dist.full_state_dict(rm)  # {} on ranks other than 0 when sharded
    part = lambda prefix: {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}  # noqa: E731
    modelio.save(rm.backbone, tok, folder, template="r1", state=part("backbone."))

    def write() -> Path:
        torch.save(part("head."), folder / "rm_head.pt")
        (folder / "rm.json").write_text(json.dumps({"center": center, "scale": scale} | meta, indent=2) + "\n")
        return folder

    return dist.on_main(write)


def load_rm(folder: Path) -> "RMScorer":
    from r1kit.pipeline import modelio

    backbone, tok, _ = modelio.load(folder)
    rm = RewardModel(backbone)
    rm.head.load_state_dict(torch.load(Path(folder) / "rm_head.pt"))
    meta = json.loads((Path(folder) / "rm.json").read_text())
    return RMScorer(rm.eval().requires_grad_(False), tok, meta["center"], meta["scale"])


class RMScorer:
    """Completions -> rewards in (0, 1): sigmoid((r - center) / scale), r read on prompt + summary. center and
    scale are the mean and std of the RM's scores on its held-out pairs, so 0.5 is a typical answer."""

    def __init__(self, rm: RewardModel, tok, center: float = 0.0, scale: float = 1.0):
        self.rm, self.tok, self.center, self.scale = rm, tok, center, max(scale, 1e-6)

    @torch.no_grad()
    def __call__(self, messages: list[list[dict]], completions: list[str], batch_size: int = 64) -> list[float]:
        from r1kit.rewards import strip_eos

        summaries = [strip_eos(c).split("</think>")[-1] for c in completions]
        out = []
        for i in range(0, len(summaries), batch_size):
            seqs = [encode_pair_side(self.tok, m, s) for m, s in zip(messages[i:i + batch_size],
                                                                     summaries[i:i + batch_size])]
            r = self.rm(*batch_ids(seqs, self.tok.eos_id))
            out += torch.sigmoid((r - self.center) / self.scale).tolist()
        return out


def run(cfg: RewardModelConfig, inputs: dict, out: Path, ctx):
    from r1kit.pipeline import modelio
    from r1kit.pipeline.runner import StageResult
    from r1kit.tasks import get_task
    from r1kit.train import dist

    torch.manual_seed(cfg.seed)
    backbone, tok, _ = modelio.load(inputs["model"])
    pairs = read_pairs(cfg.pairs) if cfg.pairs else synthetic_pairs(get_task(cfg.task, "train", **cfg.task_kw),
                                                                    cfg.n_pairs, cfg.seed)
    random.Random(cfg.seed).shuffle(pairs)
    n_eval = max(1, int(len(pairs) * cfg.eval_frac))
    held, train = pairs[:n_eval], pairs[n_eval:]
    rm = RewardModel(backbone)
    with dist.main_file(out / "metrics.jsonl") as mf:  # rank 0 writes; every rank trains
        def log(step, st):
            mf.write(json.dumps({"step": step + 1} | st) + "\n")
            if (step + 1) % max(1, cfg.steps // 5) == 0:
                ctx.log(f"  rm step {step + 1}/{cfg.steps} loss {st['loss']:.3f} pair acc {st['accuracy']:.2f}")

        losses = train_reward_model(rm, tok, train, cfg, log)
    c, r = pair_scores(rm, tok, held)
    loss, acc = bt_loss(c, r)
    both = torch.cat([c, r])
    by_kind = {}
    for kind in sorted({p.kind for p in held}):
        sel = torch.tensor([p.kind == kind for p in held])
        by_kind[f"acc_{kind}"] = (c[sel] > r[sel]).float().mean().item()
    save_rm(rm, tok, out / "rm", both.mean().item(), both.std().item(), init=str(inputs["model"]))
    metrics = {"steps": cfg.steps, "pairs": len(train), "train_loss": sum(losses[-10:]) / len(losses[-10:]),
               "heldout_loss": loss.item(), "heldout_acc": acc.item()} | by_kind
    return StageResult({"reward_model": "rm"}, metrics)

