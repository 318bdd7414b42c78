"""bench/distill_vs_rl.py: its compute accounting equals what the sft and rl stages really computed (counted by
wrapping their own batch and rollout functions), and its recipe parses."""
import importlib.util
import json
import sys
from pathlib import Path

import torch

from r1kit.pipeline.runner import check_recipe, load_recipe

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("distill_vs_rl", ROOT / "bench" / "distill_vs_rl.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["distill_vs_rl"] = bench  # dataclasses look their module up
spec.loader.exec_module(bench)


class Ctx:
    log = staticmethod(lambda s: None)


def tiny_model(tmp_path):
    from r1kit.model import ModelConfig, Transformer
    from r1kit.pipeline import modelio
    from r1kit.tokenizer import Tokenizer

    tok = Tokenizer.builtin()
    cfg = ModelConfig.from_name("tiny").replace(bos_id=tok.bos_id, eos_id=tok.eos_id)
    return modelio.save(Transformer(cfg), tok, tmp_path / "init", template="r1"), tok


def test_sft_compute_replays_the_stage_batches(tmp_path, monkeypatch):
    from r1kit import sft as sft_loop
    from r1kit.pipeline import sft

    model_dir, tok = tiny_model(tmp_path)
    f = tmp_path / "chats.jsonl"
    f.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{a}+{b}+{a}"},
        {"role": "assistant", "content": f"<think>\n{a}+{b}={a + b} {a + b}+{a}={2 * a + b}\n</think>\n\n{2 * a + b}"}]})
        + "\n" for a in range(6) for b in range(5)))
    seen = []
    real = sft_loop.batch_tensors
    monkeypatch.setattr(sft_loop, "batch_tensors", lambda batch, *a: seen.append(sum(len(x) for x, _ in batch))
                        or real(batch, *a))
    cfg = sft.SFTStageConfig(data=str(f), steps=5, batch_size=3, pack_len=64, eval_frac=0.0, seed=7)
    (tmp_path / "sft").mkdir()
    sft.run(cfg, {"model": model_dir}, tmp_path / "sft", Ctx())
    c = bench.sft_compute(f, cfg, tok)
    assert len(seen) == 5 and c.trained == sum(seen) and c.fte == 3 * sum(seen)


def test_rl_compute_matches_the_rollouts(tmp_path, monkeypatch):
    from r1kit.pipeline import rl
    from r1kit.rl import grpo
    from r1kit.rl.trainer import read_metrics

    model_dir, tok = tiny_model(tmp_path)
    counted = {"prefill": 0, "generated": 0, "trained": 0}
    real = grpo.rollout

    def counting(engine, tok_, examples, task, reward_fn, cfg, *a, **kw):
        ro = real(engine, tok_, examples, task, reward_fn, cfg, *a, **kw)
        prompts = ro.mask.argmax(1) + 1  # mask[i, p-1] is the first completion target
        counted["prefill"] += int(prompts[::cfg.group_size].sum())
        counted["generated"] += int(ro.lengths.sum())
        counted["trained"] += int((prompts + ro.lengths).sum())
        return ro

    monkeypatch.setattr(grpo, "rollout", counting)
    cfg = rl.RLStageConfig(task="arith", task_kw={"n_terms": 3}, template="r1",
                           grpo=grpo.GRPOConfig(steps=3, prompts_per_step=2, group_size=3, max_new_tokens=5, seed=4,
                                                rewards={"accuracy": 1.0, "format_r1": 1.0}))
    out = tmp_path / "rl"
    out.mkdir()
    rl.run(cfg, {"model": model_dir}, out, Ctx())
    c = bench.rl_compute(cfg, tok, read_metrics(out / "metrics.jsonl", 10))
    assert (c.prefill, c.generated, c.trained) == (counted["prefill"], counted["generated"], counted["trained"])
    assert c.reference == c.trained and c.fte == c.prefill + c.generated + 4 * c.trained  # beta > 0
    per_step = bench.rl_step_cost(cfg, c.prefill / 6, c.generated / 18)  # mean lengths give the same total
    assert abs(3 * per_step - c.fte) < 1e-6 * c.fte


def test_recipe_parses_and_students_share_template_and_eval():
    import yaml

    from r1kit.pipeline.stages import default_registry

    rec = load_recipe(ROOT / "recipes" / "distill-vs-rl-tiny.yaml")
    configs = check_recipe(rec, default_registry())
    d = yaml.safe_load((ROOT / "recipes" / "distill-vs-rl-tiny.yaml").read_text())["defaults"]
    assert d["student_rl"]["template"] == "r1"  # the template distillation SFT trains (pipeline/sft.py)
    assert d["student_rl"]["task_kw"] == rec.eval["task_kw"] == configs["distill_data"].task_kw
    assert configs["student_base"].worked_frac == 0.0 and configs["student_base"].preset == "tiny"


def test_student_corpus_never_shows_a_scratchpad():
    """worked_frac 0 and chat_worked_frac 0: every document, chat-shaped or not, has an empty thought."""
    from r1kit.pipeline.base import BaseStageConfig, corpus_texts
    from r1kit.tasks import get_task

    rec = load_recipe(ROOT / "recipes" / "distill-vs-rl-tiny.yaml")
    spec = next(s for s in rec.stages if s.name == "student_base")
    cfg = BaseStageConfig(**(spec.config | {"steps": 4, "batch_size": 16}))
    docs = corpus_texts(get_task(cfg.task, "train", **cfg.task_kw), cfg)
    assert {k for _, _, k in docs} == {"chat", "bare"}
    assert not any("=" in c for _, c, _ in docs)  # scratchpad steps are "a+b=c"
    teacher = BaseStageConfig(**(spec.config | {"steps": 4, "batch_size": 16, "chat_worked_frac": 1.0,
                                                "worked_frac": 0.0}))
    assert all("=" in c for p, c, k in corpus_texts(get_task(cfg.task, "train", **cfg.task_kw), teacher)
               if k == "chat")  # the default: chat documents think
