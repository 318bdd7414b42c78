"""The stage kinds a recipe can name: kind -> (typed config class, run function). One file per stage."""
from __future__ import annotations


def default_registry() -> dict:
    from r1kit.pipeline import base, evalstage, reward_model, rl, sample, sft
    from r1kit.pipeline.runner import Stage

    return {
        "base": Stage(base.BaseStageConfig, base.run),  # pretrain / reuse the tiny base (teacher or student)
        "rl": Stage(rl.RLStageConfig, rl.run),  # R1-Zero, reasoning RL, all-scenario RL, student RL
        "coldstart": Stage(sample.ColdStartConfig, sample.run),  # cold-start data from an R1-Zero model
        "sample": Stage(sample.SampleConfig, sample.run),  # rejection sampling (also distillation data)
        "sft": Stage(sft.SFTStageConfig, sft.run),  # chat SFT: cold start, stage 3, distillation
        "reward_model": Stage(reward_model.RewardModelConfig, reward_model.run),  # Bradley-Terry RM
        "eval": Stage(evalstage.EvalStageConfig, evalstage.run),  # a final, larger evaluation
    }
