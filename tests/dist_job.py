"""A short GRPO, SFT or reward-model run on a tiny-moe checkpoint, the same code under one process or torchrun (used by
tests/test_dist.py; not a test module itself).

    python tests/dist_job.py grpo CKPT OUT STEPS        # or: torchrun --nproc_per_node 2 tests/dist_job.py ...
"""
import json
import os
import random
import sys
from pathlib import Path

import torch


def text_reward(texts, golds, **ctx):
    """Varies within a group for any model: how many '1' characters, mod 3."""
    scores = [float(t.count("1") % 3) for t in texts]
    return scores, {"accuracy": scores}


def grpo(ckpt: str, out: str, steps: int):
    from r1kit.checkpoint.hf import load_model
    from r1kit.rl import trainer
    from r1kit.rl.grpo import GRPOConfig
    from r1kit.tasks import get_task
    from r1kit.tokenizer import Tokenizer

    torch.manual_seed(0)
    policy, tok = load_model(ckpt), Tokenizer.from_file(ckpt)
    task = get_task("arith", split="train", n_terms=2)
    cfg = GRPOConfig(steps=steps, prompts_per_step=4, group_size=4, max_new_tokens=8, lr=1e-2, beta=0.04,
                     temperature=1.0, micro_batch_tokens=64)
    trainer.train(policy, tok, task, cfg, Path(out), template="r1-zero",
                  pick=lambda rng, n: [task[i] for i in rng.sample(range(len(task)), n)],
                  reward_for_step=lambda step: text_reward, ckpt_every=1, keep_last=5, log=print)


def sft(ckpt: str, out: str, steps: int):
    from r1kit.checkpoint.hf import load_model, save_model
    from r1kit.sft import SFTConfig, train
    from r1kit.train import dist

    torch.manual_seed(0)
    model = load_model(ckpt)
    rng = random.Random(0)
    examples = []
    for _ in range(64):
        n = rng.randrange(8, 20)
        examples.append(([rng.randrange(100) for _ in range(n)], [0] * 4 + [1] * (n - 4)))
    train(model, examples, SFTConfig(steps=steps, batch_size=8, lr=1e-3, warmup=1, micro_batch_tokens=40))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.current().main:
        from r1kit.checkpoint.hf import hf_state_dict, save_checkpoint
        save_checkpoint(Path(out), model.cfg, hf_state_dict(model, full))
    del save_model


def rm(ckpt: str, out: str, steps: int):
    from r1kit.checkpoint.hf import load_model
    from r1kit.pipeline.reward_model import RewardModel, RewardModelConfig, save_rm, synthetic_pairs, train_reward_model
    from r1kit.tasks import get_task
    from r1kit.tokenizer import Tokenizer

    torch.manual_seed(0)
    model, tok = RewardModel(load_model(ckpt)), Tokenizer.from_file(ckpt)
    pairs = synthetic_pairs(get_task("arith", split="train", n_terms=2), 40)
    cfg = RewardModelConfig(steps=steps, batch_size=7, lr=1e-3, warmup=1)  # 7: the ranks' shares differ (3 + 4)
    losses = train_reward_model(model, tok, pairs, cfg)
    save_rm(model, tok, Path(out), 0.0, 1.0)
    # one file per rank: both ranks printing to one pipe could interleave mid-line
    (Path(out) / f"losses.{os.environ.get('RANK', '0')}.json").write_text(json.dumps(losses))


def lonely_error(ckpt: str, out: str, steps: int):
    """A pipeline stage that fails on the last rank only while rank 0 waits in a collective: the job must end
    (the failing rank leaves without the closing barrier), not hang."""
    from dataclasses import dataclass

    from r1kit.errors import R1kitError
    from r1kit.pipeline.runner import Recipe, Stage, StageSpec, run_pipeline
    from r1kit.train import dist

    @dataclass
    class Config:
        pass

    def stage(cfg, inputs, folder, ctx):
        d = dist.current()
        if d.rank == d.world - 1:
            raise R1kitError(f"rank {d.rank} gives up alone")
        dist.barrier()  # never joined by the last rank

    try:
        run_pipeline(Recipe("lonely", [StageSpec("s", "lonely", eval=False)]), out,
                     {"lonely": Stage(Config, stage)}, evaluator=lambda *a: {})
    except R1kitError as e:
        print(f"r1kit: error: {e}", flush=True)
        sys.exit(2)


if __name__ == "__main__":
    kind, ckpt, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    {"grpo": grpo, "sft": sft, "rm": rm, "lonely_error": lonely_error}[kind](ckpt, out, steps)
