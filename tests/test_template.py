"""The prompt template travels with the checkpoint: every command reads it instead of guessing (and an explicit
flag still wins)."""
import json

import pytest

from r1kit.engine.engine import Engine
from r1kit.tokenizer import Tokenizer, render_r1_zero

QUESTION = "What is 2+3?"


@pytest.fixture
def zero_ckpt(make_checkpoint):
    """A tiny checkpoint trained (as far as its files say) for the R1-Zero prompt."""
    return make_checkpoint("tiny", "r1-zero")


def r1_zero_ids(tok, question=QUESTION):
    return tok.encode(render_r1_zero(question), add_bos=True)


@pytest.fixture
def prompts_seen(monkeypatch):
    seen = []
    real = Engine.generate

    def spy(self, prompts, *a, **kw):
        seen.extend(list(p) for p in prompts)
        return real(self, prompts, *a, **kw)

    monkeypatch.setattr(Engine, "generate", spy)
    return seen


def test_generate_reads_the_template(zero_ckpt, prompts_seen, capsys):
    from r1kit.engine.cli import generate
    generate(str(zero_ckpt), QUESTION, max_new_tokens=2)
    tok = Tokenizer.from_file(zero_ckpt)
    assert prompts_seen == [r1_zero_ids(tok)]
    prompts_seen.clear()
    generate(str(zero_ckpt), QUESTION, max_new_tokens=2, template="r1")  # the flag wins
    assert prompts_seen == [tok.encode_chat([{"role": "user", "content": QUESTION}], template="r1")]


def test_eval_reads_the_template(zero_ckpt, tmp_path):
    from r1kit.eval.cli import eval_cmd
    rep = eval_cmd(str(zero_ckpt), "arith", k=1, limit=1, max_new_tokens=4, out_dir=str(tmp_path / "e"))
    assert rep["settings"]["template"] == "r1-zero"


def test_training_and_sampling_read_the_template(zero_ckpt, tmp_path, prompts_seen):
    """r1kit zero (the one RL loop) on the checkpoint prompts with R1-Zero and saves checkpoints that say so; the
    held-out evaluator and the pipeline's sampler read it too."""
    from r1kit.eval.heldout import EvalConfig, evaluate_examples
    from r1kit.rl.zero import zero
    from r1kit.tasks import get_task

    zero(run_dir=str(tmp_path / "run"), model=str(zero_ckpt), steps=1, prompts_per_step=1, group_size=2,
         max_new_tokens=4, eval_problems=1)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["template"] == "r1-zero"
    assert Tokenizer.from_file(tmp_path / "run" / "checkpoint-000001").template == "r1-zero"
    tok = Tokenizer.from_file(zero_ckpt)
    task = get_task("arith", split="train")
    starts = {tuple(p[:8]) for p in prompts_seen}
    assert starts == {tuple(r1_zero_ids(tok, "x")[:8])}  # every prompt of the run began as R1-Zero's
    prompts_seen.clear()
    from r1kit.pipeline import modelio
    model, tok2, meta = modelio.load(zero_ckpt)
    assert meta["template"] == "r1-zero"
    evaluate_examples(model, tok2, task, [task[0]], meta["template"], EvalConfig(k=1, max_new_tokens=2))
    assert prompts_seen == [tok.encode(task.prompt(task[0], template="r1-zero"), add_bos=True)]


@pytest.fixture
def requests_seen(monkeypatch):
    seen = []
    real_group = Engine.add_group

    def group(self, prompt, *a, **kw):  # every request enters here (add_request is a group of one)
        seen.append(list(prompt))
        return real_group(self, prompt, *a, **kw)

    monkeypatch.setattr(Engine, "add_group", group)
    return seen


def test_chat_reads_the_template(zero_ckpt, requests_seen):
    from rich.console import Console

    from r1kit.engine.load import load_for_command
    from r1kit.engine.sampling import SamplingParams
    from r1kit.serve.chat import ChatSession

    net, tok = load_for_command(str(zero_ckpt))
    session = ChatSession(Engine(net, tok, max_batch=1), tok, Console(file=open("/dev/null", "w")),
                          SamplingParams(max_new_tokens=2), tok.template, True)
    session.ask(QUESTION)
    assert requests_seen == [r1_zero_ids(tok)]


def test_serve_reads_the_template(zero_ckpt, requests_seen):
    import openai

    from r1kit.engine.load import load_for_command
    from r1kit.serve.app import create_app
    from r1kit.serve.serve import serve_in_thread

    net, tok = load_for_command(str(zero_ckpt))
    with serve_in_thread(create_app(net, tok, model_name="z", max_batch=2)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none")
        client.chat.completions.create(model="z", messages=[{"role": "user", "content": QUESTION}], max_tokens=2)
    assert requests_seen == [r1_zero_ids(tok)]
