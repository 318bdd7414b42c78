"""The pipeline runner (caching, invalidation, resume) with cheap fake stages; chat data encoding and packing; the
SFT and sampling stages on a tiny model; the shipped recipes; the CLI functions' docstrings."""
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from r1kit.errors import R1kitError
from r1kit.pipeline import data
from r1kit.pipeline.runner import Recipe, Stage, StageResult, StageSpec, check_recipe, load_recipe, run_pipeline

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


# -- fake stages -------------------------------------------------------------------------------------------------

@dataclass
class MakeConfig:
    value: int = 1


@dataclass
class AddConfig:
    plus: int = 10
    crash_once: bool = False


CALLS: list[str] = []


def make_run(cfg, inputs, out, ctx):
    CALLS.append(out.name)
    (out / "value.txt").write_text(str(cfg.value))
    return StageResult({"value": "value.txt"}, {"value": cfg.value})


def add_run(cfg, inputs, out, ctx):
    CALLS.append(out.name)
    partial = out / "partial.txt"
    if cfg.crash_once and not partial.exists():
        partial.write_text("half done")
        raise RuntimeError("simulated crash")
    x = int(inputs["value"].read_text()) + cfg.plus
    (out / "value.txt").write_text(str(x))
    return StageResult({"value": "value.txt"}, {"value": x, "resumed_from_partial": partial.exists()})


REGISTRY = {"make": Stage(MakeConfig, make_run), "add": Stage(AddConfig, add_run)}


def recipe(b_plus: int = 10, a_value: int = 1, crash: bool = False) -> Recipe:
    return Recipe("fake", [
        StageSpec("a", "make", {"value": a_value}),
        StageSpec("b", "add", {"plus": b_plus, "crash_once": crash}, {"value": "a"}),
        StageSpec("c", "add", {"plus": 100}, {"value": "b"}),
        StageSpec("d", "add", {"plus": 1000}, {"value": "a.value"}),
    ], eval={})


def run(rec, tmp_path, **kw):
    CALLS.clear()
    return {r.name: r for r in run_pipeline(rec, tmp_path, REGISTRY, evaluator=lambda *a: {}, log=lambda s: None,
                                            **kw)}


def test_first_run_runs_every_stage_in_order(tmp_path):
    out = run(recipe(), tmp_path)
    assert CALLS == ["a", "b", "c", "d"]
    assert [out[s].metrics["value"] for s in "abcd"] == [1, 11, 111, 1001]
    assert json.loads((tmp_path / "c" / "stage.json").read_text())["status"] == "done"


def test_second_run_skips_finished_stages(tmp_path):
    run(recipe(), tmp_path)
    out = run(recipe(), tmp_path)
    assert CALLS == []
    assert {r.status for r in out.values()} == {"cached"}
    assert out["c"].metrics["value"] == 111


def test_changed_config_reruns_the_stage_and_its_dependents_only(tmp_path):
    first = run(recipe(), tmp_path)
    out = run(recipe(b_plus=20), tmp_path)
    assert CALLS == ["b", "c"]  # a and d do not depend on b
    assert {s: out[s].status for s in "abcd"} == {"a": "cached", "b": "ran", "c": "ran", "d": "cached"}
    assert out["c"].metrics["value"] == 121
    assert out["b"].key != first["b"].key and out["c"].key != first["c"].key and out["d"].key == first["d"].key
    run(recipe(b_plus=20, a_value=2), tmp_path)  # the root changes: everything re-runs
    assert CALLS == ["a", "b", "c", "d"]


def test_changing_back_reruns_again_and_clears_stale_files(tmp_path):
    run(recipe(), tmp_path)
    (tmp_path / "b" / "stray.txt").write_text("from the old config")
    run(recipe(b_plus=20), tmp_path)
    assert not (tmp_path / "b" / "stray.txt").exists()
    run(recipe(), tmp_path)
    assert CALLS == ["b", "c"]


def test_interrupted_stage_resumes_in_its_folder(tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(recipe(crash=True), tmp_path)
    assert CALLS == ["a", "b"]
    assert json.loads((tmp_path / "b" / "stage.json").read_text())["status"] == "running"
    out = run(recipe(crash=True), tmp_path)
    assert CALLS == ["b", "c", "d"]  # a is cached; b resumes and finds its partial work
    assert out["b"].status == "resumed" and out["b"].metrics["resumed_from_partial"]


def test_missing_outputs_rerun_and_force(tmp_path):
    run(recipe(), tmp_path)
    (tmp_path / "d" / "value.txt").unlink()
    run(recipe(), tmp_path)
    assert CALLS == ["d"]
    run(recipe(), tmp_path, force=("a",))
    assert CALLS == ["a"]  # same config, same key: dependents stay cached


def test_until_stops_early(tmp_path):
    out = run(recipe(), tmp_path, until="b")
    assert list(out) == ["a", "b"]


def test_recipe_errors_are_caught_before_running(tmp_path):
    bad_key = Recipe("x", [StageSpec("a", "make", {"valu": 1})])
    with pytest.raises(R1kitError, match="unknown option"):
        run(bad_key, tmp_path)
    forward_ref = Recipe("x", [StageSpec("b", "add", {}, {"value": "a"}), StageSpec("a", "make")])
    with pytest.raises(R1kitError, match="not an earlier stage"):
        run(forward_ref, tmp_path)
    with pytest.raises(R1kitError, match="unknown kind"):
        run(Recipe("x", [StageSpec("a", "nope")]), tmp_path)
    assert CALLS == []


def test_file_content_is_part_of_the_key(tmp_path):
    from r1kit.pipeline.config import stage_key
    from r1kit.pipeline.sft import SFTStageConfig

    f = tmp_path / "chats.jsonl"
    f.write_text('{"messages": []}\n')
    k1 = stage_key("sft", SFTStageConfig(data=str(f)), {})
    f.write_text('{"messages": [1]}\n')
    assert stage_key("sft", SFTStageConfig(data=str(f)), {}) != k1


def test_shipped_recipes_parse_and_check():
    from r1kit.pipeline.stages import default_registry

    for name in ("r1-tiny.yaml", "r1-zero-tiny.yaml"):
        rec = load_recipe(ROOT / "recipes" / name)
        configs = check_recipe(rec, default_registry())
        assert "base" in configs
    tiny = load_recipe(ROOT / "recipes" / "r1-tiny.yaml")
    kinds = [s.kind for s in tiny.stages]
    for kind in ("base", "rl", "coldstart", "sft", "sample", "reward_model"):
        assert kind in kinds
    configs = check_recipe(tiny, default_registry())
    a, b = tiny.report["compare"]
    assert configs[a].steps == configs[b].grpo.steps  # the distillation comparison uses equal optimiser steps


# -- chat data ---------------------------------------------------------------------------------------------------

def test_assistant_completion_forms():
    assert data.assistant_completion("<think>\nr\n</think>\n\nS") == "r\n</think>\n\nS"
    assert data.assistant_completion("Hello!") == "\n</think>\n\nHello!"
    assert data.assistant_completion("r\n</think>\n\nS") == "r\n</think>\n\nS"
    assert data.r1_message(" r ", "S") == "<think>\nr\n</think>\n\nS"


def test_encode_chat_masks_assistant_tokens_only():
    from r1kit.tokenizer import Tokenizer

    tok = Tokenizer.builtin()
    msgs = [{"role": "user", "content": "1+2"},
            {"role": "assistant", "content": "<think>\n1+2=3\n</think>\n\nIt is 3."},
            {"role": "user", "content": "and 2+2"}, {"role": "assistant", "content": "4"}]
    ex = data.encode_chat(tok, msgs)
    assert len(ex) == 2  # one example per assistant turn
    ids, mask = ex[0]
    target = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(target) == "1+2=3\n</think>\n\nIt is 3." + "<｜end▁of▁sentence｜>"
    assert ids[:mask.index(1)] == tok.encode_chat(msgs[:1])  # the prompt exactly as at inference
    ids2, mask2 = ex[1]
    assert tok.decode([i for i, m in zip(ids2, mask2) if m]) == "\n</think>\n\n4<｜end▁of▁sentence｜>"
    assert "1+2=3" not in tok.decode(ids2)  # history keeps only the earlier answer
    assert data.encode_chat(tok, msgs, max_len=10) == []


def test_pack_keeps_every_token_and_cuts_padding():
    exs = [([0] + [5] * n, [0] + [1] * n) for n in (3, 30, 7, 50, 12, 9, 40, 2)]
    rows = data.pack(exs, pack_len=64, seed=0)
    assert all(len(x) <= 64 for x, _ in rows) and len(rows) < len(exs)
    assert sum(len(x) for x, _ in rows) == sum(len(x) for x, _ in exs)
    assert sum(sum(m) for _, m in rows) == sum(sum(m) for _, m in exs)
    assert data.padding_fraction(rows, 4) < data.padding_fraction(exs, 4)
    big = data.pack([([0] * 100, [1] * 100)], pack_len=64)
    assert len(big) == 1 and len(big[0][0]) == 100


def test_write_versioned(tmp_path):
    p1 = data.write_versioned(tmp_path, "sft", [{"messages": [1]}], {"note": "a"})
    assert p1.name == "sft-v1.jsonl" and json.loads(p1.with_suffix(".stats.json").read_text())["version"] == 1
    assert data.write_versioned(tmp_path, "sft", [{"messages": [1]}], {}) == p1  # same content: same version
    p2 = data.write_versioned(tmp_path, "sft", [{"messages": [2]}], {})
    assert p2.name == "sft-v2.jsonl" and p1.exists()


# -- stages on a tiny model --------------------------------------------------------------------------------------

@pytest.fixture
def tiny_model_dir(tmp_path):
    from r1kit.model import ModelConfig, Transformer
    from r1kit.pipeline import modelio
    from r1kit.tokenizer import Tokenizer

    tok = Tokenizer.builtin()
    cfg = ModelConfig.from_name("tiny").replace(bos_id=tok.bos_id, eos_id=tok.eos_id)
    return modelio.save(Transformer(cfg), tok, tmp_path / "init", template="r1")


class Ctx:
    log = staticmethod(lambda s: None)


def test_sft_stage_trains_on_chat_jsonl(tmp_path, tiny_model_dir):
    from r1kit.pipeline import modelio, sft

    f = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{a}+{b}"},
                          {"role": "assistant", "content": f"<think>\n{a}+{b}={a + b}\n</think>\n\n{a + b}"}]}
            for a in range(5) for b in range(5)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sft"
    out.mkdir()
    cfg = sft.SFTStageConfig(data=str(f), epochs=3, batch_size=2, lr=1e-2, warmup=2, pack_len=128, eval_frac=0.2)
    res = sft.run(cfg, {"model": tiny_model_dir}, out, Ctx())
    assert res.metrics["steps"] == -(-3 * res.metrics["rows"] // 2)  # ceil(epochs * rows / batch)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == res.metrics["steps"]
    assert res.metrics["loss"] < lines[0]["loss"] - 1.0 and "eval_loss" in res.metrics
    _, _, meta = modelio.load(out / "model")
    assert meta["template"] == "r1"


def test_sft_and_rl_stages_train_lora_adapters(tmp_path, tiny_model_dir, monkeypatch):
    """LoRA in both loops: only adapters change, the PEFT adapter sits beside the merged export, and the RL stage's
    reference is the base (adapters off) rather than a copy."""
    from safetensors.torch import load_file

    from r1kit.checkpoint.hf import load_state_dict
    from r1kit.pipeline import rl, sft
    from r1kit.rl.grpo import GRPOConfig
    from r1kit.train.lora import LoRAConfig

    f = tmp_path / "chats.jsonl"
    f.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{a}+1"},
                                                  {"role": "assistant", "content": f"{a + 1}"}]}) + "\n"
                         for a in range(8)))
    base = load_state_dict(tiny_model_dir)

    def alternating(cfg, rm=None):  # a random model earns no rule reward: give the groups a signal
        return lambda texts, golds, **ctx: ([float(i % 2) for i in range(len(texts))],
                                            {"accuracy": [float(i % 2) for i in range(len(texts))]})

    monkeypatch.setattr(rl, "make_reward_fn", alternating)
    for name, stage, cfg in [
        ("sft", sft, sft.SFTStageConfig(data=str(f), steps=3, batch_size=4, lr=1e-2, lora=LoRAConfig(rank=4))),
        ("rl", rl, rl.RLStageConfig(task="arith", task_kw={"n_terms": 2}, template="r1", lora=LoRAConfig(rank=4),
                                    grpo=GRPOConfig(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=6,
                                                    lr=1e-2, beta=0.04)))]:
        out = tmp_path / name
        out.mkdir()
        stage.run(cfg, {"model": tiny_model_dir}, out, Ctx())
        conf = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert conf["peft_type"] == "LORA" and conf["r"] == 4
        assert any(v.abs().sum() > 0 for k, v in load_file(str(out / "adapter" / "adapter_model.safetensors")).items()
                   if "lora_B" in k)  # B started at zero and trained
        merged = load_state_dict(out / "model")
        assert merged.keys() == base.keys()  # exported merged, in the base's layout
        assert any(not torch.equal(merged[k], base[k]) for k in base if "q_proj" in k)
        assert all(torch.equal(merged[k], base[k]) for k in base if "norm" in k)  # not an adapter target


def test_sample_stage_plumbing(tmp_path, tiny_model_dir):
    """An untrained model answers nothing correctly: every sample is counted under a reason, and the output is the
    non-reasoning mix alone, versioned with stats."""
    from r1kit.pipeline.sample import SampleConfig, build

    cfg = SampleConfig(task="arith", task_kw={"n_terms": 2}, prompts=6, k=2, max_new_tokens=8, general_frac=0.5,
                       shard_prompts=4, benchmarks=False)
    path, stats = build(tiny_model_dir, cfg, tmp_path / "out")
    assert path.name == "data-v1.jsonl" and sorted(p.name for p in (tmp_path / "out/shards").iterdir()) == \
        sorted(f"{k}.jsonl" for k in stats["shards"]) and len(set(stats["shards"])) == 2
    assert stats["samples"] == 12 and sum(v for k, v in stats["counts"].items() if k != "kept") == 12
    assert stats["reasoning_rows"] == 0 and stats["general_rows"] == 0  # mixing is relative to the reasoning rows
    path2, stats2 = build(tiny_model_dir, cfg, tmp_path / "out")  # shards are reused: no new sampling
    assert path2 == path and stats2["counts"] == stats["counts"]


def _shard_questions(out, stats) -> list[str]:
    return [json.loads(line)["question"] for k in stats["shards"]
            for line in (out / "shards" / f"{k}.jsonl").read_text().splitlines()]


def test_sample_rerun_with_other_settings_never_reuses_shards(tmp_path, tiny_model_dir):
    """Shards are keyed by everything that makes their rows: a rerun into the same folder with another task (or
    temperature) samples that task afresh, and its stats name the real source."""
    from r1kit.pipeline.sample import SampleConfig, build, model_sha256
    from r1kit.tasks import get_task

    out = tmp_path / "out"
    base = dict(prompts=4, k=2, max_new_tokens=8, general_frac=0.0, shard_prompts=4, benchmarks=False, decontam_n=0)
    _, first = build(tiny_model_dir, SampleConfig(task="arith", task_kw={"n_terms": 2}, **base), out)
    _, second = build(tiny_model_dir, SampleConfig(task="countdown", **base), out)
    countdown = {ex.question for ex in get_task("countdown", "train")}
    arith_q, countdown_q = _shard_questions(out, first), _shard_questions(out, second)
    assert set(first["shards"]).isdisjoint(second["shards"])
    assert countdown_q and set(countdown_q) <= countdown and not set(arith_q) & countdown
    assert second["task"] == "countdown" and second["samples"] == len(countdown_q) == 8
    assert second["model_sha256"] == model_sha256(tiny_model_dir)
    _, hotter = build(tiny_model_dir, SampleConfig(task="countdown", temperature=0.5, **base), out)
    assert hotter["temperature"] == 0.5 and set(hotter["shards"]).isdisjoint(second["shards"])


# -- CLI ---------------------------------------------------------------------------------------------------------

def test_cli_functions_document_every_parameter():
    from r1kit.cli import _arg_help
    from r1kit.pipeline.cli import pipeline, sample

    for fn in (pipeline, sample):
        helps = _arg_help(inspect.getdoc(fn))
        assert set(helps) == set(inspect.signature(fn).parameters), fn.__name__


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_document_masked_packing_is_exact(preset):
    from r1kit.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(preset).replace(bos_id=0, eos_id=1)).eval()
    docs = [[0, 5, 9, 33, 7, 1], [0, 12, 40, 41, 42, 43, 44, 1], [0, 3, 1]]
    packed = torch.tensor([sum(docs, [])])
    out = data.DocumentMasked(model, bos_id=0)(packed)
    alone = torch.cat([model(torch.tensor([d])) for d in docs], dim=1)
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(model(packed), alone, atol=1e-3)  # naive packing attends across documents


def test_rl_stage_resumes_mid_stage_exactly(tmp_path, tiny_model_dir, monkeypatch):
    """Crash an RL stage after its step-2 checkpoint; the re-run resumes there and ends with the same weights."""
    import r1kit.rl.grpo as grpo
    from r1kit.checkpoint.hf import load_state_dict
    from r1kit.pipeline import rl

    cfg = rl.RLStageConfig(task="arith", task_kw={"n_terms": 2}, template="r1-zero", ckpt_every=2,
                           grpo=grpo.GRPOConfig(steps=4, prompts_per_step=2, group_size=2, max_new_tokens=6, lr=1e-3))
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    full.mkdir(), crashed.mkdir()
    rl.run(cfg, {"model": tiny_model_dir}, full, Ctx())
    real_step = grpo.grpo_step

    def crash_at_3(*args, **kw):
        if args[-1] == 3:
            raise RuntimeError("killed")
        return real_step(*args, **kw)

    import r1kit.rl.trainer as trainer
    monkeypatch.setattr(trainer, "grpo_step", crash_at_3)
    with pytest.raises(RuntimeError, match="killed"):
        rl.run(cfg, {"model": tiny_model_dir}, crashed, Ctx())
    assert (crashed / "checkpoint-000002").is_dir() and not (crashed / "model").exists()
    monkeypatch.setattr(trainer, "grpo_step", real_step)
    logs = []
    rl.run(cfg, {"model": tiny_model_dir}, crashed, type("C", (), {"log": staticmethod(logs.append)})())
    assert any("resumed from checkpoint-000002 at step 2" in s for s in logs)
    steps = [json.loads(x)["step"] for x in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    a, b = load_state_dict(full / "model"), load_state_dict(crashed / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
