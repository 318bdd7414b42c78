"""Evaluation harness: pass@k reference vectors, majority vote, the verifier cases through the harness's scoring path,
answer-section stripping, end-to-end runs (in-process engine on a tiny checkpoint, HTTP against a fake OpenAI server)
with resume, and bad input."""

import json
import math
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from r1kit.tasks import benchmarks_dir
import torch

from r1kit.errors import R1kitError
from r1kit.eval import (
    GenParams,
    OpenAISampler,
    RunConfig,
    SampleRequest,
    cluster_answers,
    cons_at_k,
    eval_cmd,
    get_bench,
    majority_vote,
    mean_stderr,
    pass_at_k,
    read_records,
    score_math,
)
from r1kit.eval.benchmarks import BENCHES, math_equivalent
from r1kit.eval.samplers import _runs, parse_response

CASES = benchmarks_dir() / "verifier_cases.jsonl"  # ships with r1kit (data/)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics

REFERENCE = [  # Chen et al. 2021 / lighteval (docs/EVAL.md, "Metrics")
    ((64, 0, 1), 0.0), ((64, 64, 1), 1.0), ((64, 17, 1), 0.265625), ((10, 5, 1), 0.5), ((10, 5, 2), 0.777778),
    ((10, 5, 5), 0.996032), ((10, 5, 6), 1.0), ((5, 1, 5), 1.0), ((200, 10, 10), 0.408548),
    ((200, 10, 100), 0.999229), ((16, 3, 8), 0.9),
]


@pytest.mark.parametrize("nck,want", REFERENCE)
def test_pass_at_k_reference_vectors(nck, want):
    assert pass_at_k(*nck) == pytest.approx(want, abs=5e-7)


def test_pass_at_k_edges_and_combinatorial_form():
    assert pass_at_k(7, 0, 7) == 0.0  # c = 0, k = n
    assert pass_at_k(7, 7, 7) == 1.0  # c = n
    assert pass_at_k(7, 1, 7) == 1.0  # k = n, one correct
    assert pass_at_k(8, 5, 4) == 1.0  # n - c < k
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 80)
        c, k = rng.randint(0, n), rng.randint(1, n)
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
        if k == 1:
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)
    for bad in ((0, 0, 1), (5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)):
        with pytest.raises(R1kitError):
            pass_at_k(*bad)


def test_mean_stderr_matches_lighteval():
    # AIME with one sample, 14/30 correct: 0.4667 +- 0.0926 (= sqrt(p(1-p)/(N-1)))
    m, se = mean_stderr([1.0] * 14 + [0.0] * 16)
    assert m == pytest.approx(0.4667, abs=1e-4) and se == pytest.approx(0.0926, abs=1e-4)
    assert mean_stderr([0.5]) == (0.5, 0.0)


def _exact(reps, answers):
    return [r == a for r, a in zip(reps, answers)]


def test_majority_vote_ties_and_empty_cluster():
    # 2-2 tie: the cluster whose first member comes first wins
    assert majority_vote(["3", "5", "5", "3"], _exact) == (0, [0, 3])
    assert majority_vote(["5", "3", "3", "5"], _exact) == (0, [0, 3])
    # samples without an answer form one "empty" cluster (id -1), which can win and is never correct
    assert majority_vote([None, "4", None, "", "4"], _exact) == (-1, [0, 2, 3])
    assert cons_at_k([None, "4", None], [False, True, False], _exact) == (False, None)
    assert cons_at_k(["4", "7", "4"], [True, False, True], _exact) == (True, "4")
    assert cons_at_k(["7", "4", "4"], [False, True, True], _exact) == (True, "4")


def test_cons_clusters_equivalent_answers_through_the_verifier():
    answers = ["3", "1/2", "\\frac12", "0.5", "3", "\\frac{1}{2}", None]
    assert cluster_answers(answers, math_equivalent) == [0, 1, 1, 1, 0, 1, -1]
    winner, members = majority_vote(answers, math_equivalent)
    assert members == [1, 2, 3, 5]
    ok, ans = cons_at_k(answers, [False, True, True, True, False, True, False], math_equivalent)
    assert ok and ans == "1/2"


# ---------------------------------------------------------------------------------------------------------------------
# Scoring path


def test_verifier_cases_through_the_harness():
    rows = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    texts = [f"Let me think about it.\n</think>\n\n{r['prediction']}" for r in rows]
    scores = score_math([r["gold"] for r in rows], texts)
    disagree = [r["id"] for r, s in zip(rows, scores) if int(s.correct) != r["expected"]]
    agreement = 1 - len(disagree) / len(rows)
    print(f"harness verifier agreement {len(rows) - len(disagree)}/{len(rows)}; disagree {disagree}")
    assert agreement >= 0.95, disagree


def test_answer_section_stripping_golden_cases():
    golds = ["5", "5", "5", "5", "5", "5", "025", "x"]
    texts = [
        "I think the answer is \\boxed{5}",                           # no </think>: not answered
        "a</think>wrong \\boxed{4}</think>The answer is \\boxed{5}.",  # two </think>: the last one counts
        "<think>\n\n</think>\n\n\\boxed{5}",                          # empty thought
        "so \\boxed{5}\n</think>\n\nI am not sure.",                  # boxed only inside the thought
        "x</think>\\boxed{5} ... Actually wait, \\boxed{6}",           # hedged: the last box answers
        "x</think><answer>5</answer>",                                 # R1-Zero answer tag
        "x</think>The answer is $\\boxed{25}$.",                       # AIME gold with a leading zero
        "x</think><answer>1</answer><answer>x</answer>",               # two answer tags: malformed
    ]
    got = [s.verdict for s in score_math(golds, texts)]
    assert got == ["fail", "pass", "pass", "fail", "fail", "pass", "pass", "fail"]
    s = score_math(["5"], ["x</think>\\boxed{5} ... Actually wait, \\boxed{6}"])[0]
    assert s.answer == "6"


def test_parse_response_rejoins_reasoning_content():
    def resp(content, reasoning, finish="stop", usage=None):
        msg = {"role": "assistant", "content": content}
        if reasoning is not None:
            msg["reasoning_content"] = reasoning
        return {"choices": [{"message": msg, "finish_reason": finish}], "usage": usage or {}}

    c = parse_response(resp("The answer is \\boxed{7}.", "3+4=7", usage={
        "prompt_tokens": 9, "completion_tokens": 20, "completion_tokens_details": {"reasoning_tokens": 12}}))
    assert c.text == "3+4=7</think>The answer is \\boxed{7}." and (c.think_tokens, c.answer_tokens) == (12, 8)
    assert c.prompt_tokens == 9 and c.finish_reason == "stop"
    cut = parse_response(resp("", "still thinking", finish="length"))
    assert cut.text == "still thinking" and cut.finish_reason == "length"  # unfinished thought: no answer section
    inline = parse_response(resp("hmm</think>\\boxed{1}", None, usage={"completion_tokens": 10}))
    assert inline.text == "hmm</think>\\boxed{1}" and inline.think_tokens + inline.answer_tokens == 10
    newer = {"choices": [{"message": {"content": "ok", "reasoning": "r"}, "finish_reason": "stop"}]}
    assert parse_response(newer).text == "r</think>ok"


def test_seed_runs():
    assert _runs([0, 1, 2, 5, 6, 9], 8) == [(0, 3), (5, 2), (9, 1)]
    assert _runs(list(range(10)), 4) == [(0, 4), (4, 4), (8, 2)]


# ---------------------------------------------------------------------------------------------------------------------
# Registry and bad input


def test_registry_and_prompts():
    assert {"math500", "aime24", "amc23", "gsm8k", "minerva", "arith", "countdown", "humaneval"} <= set(BENCHES)
    b = get_bench("arith")
    item = b.items()[0]
    msgs = b.prompt(item, "r1")
    assert msgs[0]["role"] == "user" and len(msgs) == 1  # no system prompt
    assert msgs[0]["content"].endswith("Please reason step by step, and put your final answer within \\boxed{}.")
    assert b.prompt(item, "r1-zero").endswith("Assistant:")
    with pytest.raises(R1kitError, match="template"):
        b.prompt(item, "chatml")


def test_shipped_benchmark_files_load():
    sizes = {"math500": 500, "aime24": 30, "amc23": 40, "gsm8k": 1319, "minerva": 272}
    benches = {name: get_bench(name) for name in sizes}
    for name, b in benches.items():
        items = b.items()
        assert len(items) == sizes[name] and len({it.id for it in items}) == len(items), name
    aime = benches["aime24"].items()
    assert aime[0].id == "60" and aime[0].example.answer.isdigit()
    assert benches["gsm8k"].items()[0].example.answer == "18"


def test_unknown_bench_lists_known_names():
    with pytest.raises(R1kitError) as e:
        get_bench("mmlu")
    msg = str(e.value)
    assert "unknown benchmark 'mmlu'" in msg and all(n in msg for n in ("math500", "aime24", "humaneval", "arith"))


def test_malformed_jsonl_names_the_line(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": "4"}\n{"problem": oops}\n')
    with pytest.raises(R1kitError, match=r"mine\.jsonl: line 3"):
        get_bench(str(f))
    g = tmp_path / "he.jsonl"
    g.write_text('{"task_id": "t/0", "prompt": "def f():\\n", "test": "", "entry_point": "f"}\n[1, 2]\n')
    with pytest.raises(R1kitError, match=r"he\.jsonl: line 2"):
        get_bench(str(g))


def test_bad_k_limit_and_template(tmp_path):
    with pytest.raises(R1kitError, match="k must be"):
        eval_cmd("tiny", "arith", k=0, out_dir=str(tmp_path))
    with pytest.raises(R1kitError, match="limit"):
        RunConfig(k=1, limit=-1)
    with pytest.raises(R1kitError, match="template"):
        RunConfig(k=1, template="chatml")
    with pytest.raises(R1kitError, match="top_p"):
        RunConfig(k=1, top_p=0.0)


# ---------------------------------------------------------------------------------------------------------------------
# End to end: in-process engine on a tiny checkpoint


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from r1kit.checkpoint.hf import save_model
    from r1kit.model import ModelConfig, Transformer
    from r1kit.tokenizer import Tokenizer

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    save_model(Transformer(ModelConfig.from_name("tiny")), folder)
    Tokenizer.builtin().save(folder)
    return folder


def test_eval_cmd_end_to_end_and_resume(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    rep = eval_cmd(str(tiny_ckpt), "arith", k=2, limit=4, max_new_tokens=24, out_dir=str(out), concurrency=4)
    files = {p.name for p in out.iterdir()}
    assert files == {"arith.samples.jsonl", "arith.report.json", "arith.report.md"}
    recs = read_records(out / "arith.samples.jsonl")
    assert len(recs) == 8 and rep["new_samples"] == 8
    need = {"problem_id", "sample_index", "params_hash", "prompt_hash", "seed", "sampling", "finish_reason",
            "prompt_tokens", "think_tokens", "answer_tokens", "text", "answer", "verdict", "verifier", "truncated"}
    assert all(need <= set(r) for r in recs)
    assert {(r["problem_id"], r["sample_index"]) for r in recs} == {(str(i), j) for i in range(4) for j in range(2)}
    assert recs[0]["sampling"] == {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 24, "template": "r1"}
    assert recs[0]["verifier"]["version"] and recs[0]["seed"] + 1 == recs[1]["seed"]
    assert all(r["finish_reason"] in ("stop", "length") for r in recs)
    report = json.loads((out / "arith.report.json").read_text())
    m = report["metrics"]
    assert report["k"] == 2 and report["n_problems"] == 4
    for key in ("pass@1", "pass@1_stderr", "pass@2", "cons@2", "truncation_rate", "mean_think_tokens",
                "mean_answer_tokens"):
        assert key in m, key
    assert m["truncation_rate"] == 1.0 and m["pass@1"] == 0.0  # an untrained model never closes its thought
    md = (out / "arith.report.md").read_text()
    assert "pass@1" in md and "cons@2" in md and "truncation" in md.lower()
    assert "pass@1 = 0.00 ± 0.00 (k=2, 4 problems)" in capsys.readouterr().out

    # a rerun samples nothing; a larger k samples only the new indices, with the same seeds as a fresh run would
    again = eval_cmd(str(tiny_ckpt), "arith", k=2, limit=4, max_new_tokens=24, out_dir=str(out), concurrency=4)
    assert again["new_samples"] == 0 and len(read_records(out / "arith.samples.jsonl")) == 8
    more = eval_cmd(str(tiny_ckpt), "arith", k=3, limit=4, max_new_tokens=24, out_dir=str(out), concurrency=4)
    assert more["new_samples"] == 4 and more["n_samples"] == 12
    eval_cmd(str(tiny_ckpt), "arith", k=3, limit=4, max_new_tokens=24, out_dir=str(tmp_path / "fresh"),
                     concurrency=2)
    a = {(r["problem_id"], r["sample_index"]): r["text"] for r in read_records(out / "arith.samples.jsonl")}
    b = {(r["problem_id"], r["sample_index"]): r["text"] for r in read_records(tmp_path / "fresh" /
                                                                                "arith.samples.jsonl")}
    assert a == b  # sampling is a function of (seed, problem, sample index), not of batching or resumption
    # other settings are a different params hash: nothing is reused
    other = eval_cmd(str(tiny_ckpt), "arith", k=2, limit=4, max_new_tokens=24, out_dir=str(out), temperature=1.0)
    assert other["new_samples"] == 8


def test_interrupted_run_resumes(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    eval_cmd(str(tiny_ckpt), "arith", k=2, limit=2, max_new_tokens=8, out_dir=str(out))
    path = out / "arith.samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # killed while writing the third record
    rep = eval_cmd(str(tiny_ckpt), "arith", k=2, limit=2, max_new_tokens=8, out_dir=str(out))
    assert rep["new_samples"] == 2 and rep["n_samples"] == 4


def test_r1_zero_template_and_model_template_errors(tiny_ckpt, tmp_path):
    rep = eval_cmd(str(tiny_ckpt), "countdown", k=1, limit=2, max_new_tokens=8, out_dir=str(tmp_path),
                   template="r1-zero")
    assert rep["n_samples"] == 2 and rep["settings"]["template"] == "r1-zero"
    import shutil
    bare = tmp_path / "bare"
    shutil.copytree(tiny_ckpt, bare)
    conf = json.loads((bare / "tokenizer_config.json").read_text())
    conf.pop("chat_template"), conf.pop("r1kit_template")
    (bare / "tokenizer_config.json").write_text(json.dumps(conf))
    with pytest.raises(R1kitError, match="chat_template"):  # a tokenizer with no jinja template
        eval_cmd(str(bare), "arith", k=1, limit=1, max_new_tokens=8, out_dir=str(tmp_path), template="model")


# ---------------------------------------------------------------------------------------------------------------------
# HTTP sampler against a fake OpenAI-compatible server


class _FakeOpenAI(BaseHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body, self.headers.get("Authorization")))
        question = body["messages"][-1]["content"]
        a, b = map(int, re.findall(r"\d+", question)[:2])
        seed = body["seed"]
        if "7" in question and seed % 2 == 0:  # truncated inside the thought: empty content
            msg, finish = {"role": "assistant", "content": "", "reasoning_content": "adding " * 5}, "length"
        else:
            answer = a + b if seed % 3 else a + b + 1  # every third seed is wrong
            msg = {"role": "assistant", "content": f"So the sum is $\\boxed{{{answer}}}$.",
                   "reasoning_content": f"{a} plus {b}, let me add them."}
            finish = "stop"
        data = {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 30,
                          "completion_tokens_details": {"reasoning_tokens": 18}}}
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture()
def fake_server():
    _FakeOpenAI.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_http_sampler_against_fake_server(fake_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-recorded")
    data = tmp_path / "sums.jsonl"
    rows = [{"id": f"s{i}", "problem": f"What is {a} + {b}?", "answer": str(a + b)}
            for i, (a, b) in enumerate([(2, 3), (4, 7), (10, 20)])]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = eval_cmd("fake-r1", str(data), k=4, base_url=fake_server, out_dir=str(tmp_path / "out"), concurrency=3)
    reqs = _FakeOpenAI.requests
    assert len(reqs) == 12 and all(path == "/v1/chat/completions" for path, _, _ in reqs)
    body = reqs[0][1]
    assert body["temperature"] == 0.6 and body["top_p"] == 0.95 and body["max_tokens"] == 32768
    assert body["model"] == "fake-r1" and len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
    assert "put your final answer within \\boxed{}" in body["messages"][0]["content"]
    assert all(auth == "Bearer sk-test-not-recorded" for _, _, auth in reqs)
    recs = read_records(tmp_path / "out" / "sums.samples.jsonl")
    assert len(recs) == 12 and "sk-test" not in (tmp_path / "out" / "sums.samples.jsonl").read_text()
    ok = [r for r in recs if r["finish_reason"] == "stop"]
    assert all(r["text"].count("</think>") == 1 and r["text"].endswith("$.") for r in ok)
    assert all(r["think_tokens"] == 18 and r["answer_tokens"] == 12 for r in recs)
    # expected correctness from the fake server's rules
    want = {}
    for r in recs:
        q = next(x for x in rows if x["id"] == r["problem_id"])["problem"]
        cut = "7" in q and r["seed"] % 2 == 0
        want[(r["problem_id"], r["sample_index"])] = (not cut) and r["seed"] % 3 != 0
        assert r["answered"] == (not cut) and r["truncated"] == cut
    assert {(r["problem_id"], r["sample_index"]): bool(r["correct"]) for r in recs} == want
    assert rep["metrics"]["pass@1"] == pytest.approx(sum(want.values()) / 12)
    # resume: nothing is requested again
    _FakeOpenAI.requests = []
    again = eval_cmd("fake-r1", str(data), k=4, base_url=fake_server, out_dir=str(tmp_path / "out"))
    assert again["new_samples"] == 0 and _FakeOpenAI.requests == []


def test_http_sampler_errors_are_recorded_and_retried(tmp_path):
    sampler = OpenAISampler("http://127.0.0.1:9/v1", "m", max_retries=0)  # port 9: nothing listens
    out = sampler.sample([SampleRequest([{"role": "user", "content": "hi"}], [0])], GenParams(max_new_tokens=8))
    assert out[0][0].finish_reason == "error" and out[0][0].error
    with pytest.raises(R1kitError):
        OpenAISampler("127.0.0.1:8000", "m")


# ---------------------------------------------------------------------------------------------------------------------
# HumanEval scoring through the sandbox


def test_humaneval_bench_scores_code_blocks():
    try:
        bench = get_bench("humaneval")
    except R1kitError as e:
        pytest.skip(str(e))
    items = bench.items()[:3]
    assert len(bench.items()) == 164 and items[0].id == "HumanEval/0"
    prompt = bench.prompt(items[0], "r1")[0]["content"]
    assert "```python\nfrom typing import List" in prompt
    full = [it.example.meta["problem"]["prompt"] + it.example.meta["problem"]["canonical_solution"] for it in items]
    texts = [f"thinking</think>\nHere it is:\n```python\n{full[0]}```\n",                       # whole function
             f"t</think>```python\n{items[1].example.meta['problem']['canonical_solution']}```",  # body only
             f"no thought close\n```python\n{full[2]}```"]                                        # not answered
    scores = bench.score(items, texts)
    assert [s.verdict for s in scores] == ["pass", "pass", "fail"], [s.details for s in scores]
    broken = bench.score(items[:1], ["t</think>```python\ndef has_close_elements(numbers, threshold):\n"
                                     "    return True\n```"])
    assert broken[0].verdict == "fail" and "AssertionError" in broken[0].details
    assert bench.equivalence() is None and bench.verifier_info()["name"] == "r1kit.sandbox"
