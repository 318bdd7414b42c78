"""Tasks: seeded generators, worked solutions, the safe countdown checker, and the jsonl loaders."""

import json

import pytest

from r1kit.errors import R1kitError
from r1kit.rewards import REWARDS, check_countdown, combine, format_ok, format_r1_ok, parse_expr, UnsafeExpression
from r1kit.tasks import (
    ArithTask,
    CountdownTask,
    Example,
    GSM8KTask,
    JsonlTask,
    TaskMixture,
    benchmarks_dir,
    get_task,
)
from r1kit.tasks.synthetic import arith_steps

BENCH = benchmarks_dir()

# ---------------------------------------------------------------------------------------------------------------------
# Synthetic tasks


@pytest.mark.parametrize("name", ["arith", "countdown"])
def test_generators_are_deterministic_by_seed(name):
    a, b = get_task(name, seed=3), get_task(name, seed=3)
    other = get_task(name, seed=4)
    qa = [a[i].question for i in range(50)]
    assert qa == [b[i].question for i in range(50)]
    assert [a[i].answer for i in range(50)] == [b[i].answer for i in range(50)]
    assert qa != [other[i].question for i in range(50)]
    # random access gives the same example as sequential access
    assert a[37] == b[37] and a[37].question == qa[37]


@pytest.mark.parametrize("name", ["arith", "countdown"])
def test_train_and_test_splits_are_disjoint(name):
    train = {e.question for e in get_task(name, split="train", size=300)}
    test = {e.question for e in get_task(name, split="test", size=100)}
    assert test and not (train & test)
    assert len(get_task(name, split="test")) == 500


def test_arith_difficulty_knobs_and_scratchpad():
    task = ArithTask(n_terms=4, max_operand=5, ops="+*", size=50)
    for ex in task:
        nums = ex.meta["numbers"]
        assert len(nums) == 4 and all(1 <= x <= 5 for x in nums)
        assert set(ex.question) <= set("0123456789+*")
        assert int(ex.answer) == eval(ex.question)  # trusted generator output, not model text
    assert arith_steps([3, 5, 2, 4], ["+", "*", "-"]) == (["5*2=10", "3+10=13", "13-4=9"], 9)
    assert arith_steps([7, 8, 6], ["+", "+"]) == (["7+8=15", "15+6=21"], 21)
    with pytest.raises(R1kitError, match="n_terms"):
        ArithTask(n_terms=1)
    with pytest.raises(R1kitError, match="ops"):
        ArithTask(ops="+/")


def test_countdown_examples_are_solvable():
    task = CountdownTask(n_numbers=(3, 4), max_number=12, max_target=50, size=100)
    for ex in task:
        nums, target = ex.meta["numbers"], ex.meta["target"]
        assert 3 <= len(nums) <= 4 and 1 <= target <= 50
        assert check_countdown(ex.answer, nums, target)
        assert ex.question == f"Use {', '.join(map(str, nums))} to make {target}"


@pytest.mark.parametrize(
    "task",
    [ArithTask(size=40), ArithTask(size=40, lang="en", n_terms=3), ArithTask(size=40, lang="zh"),
     CountdownTask(size=40), CountdownTask(size=40, n_numbers=4)],
    ids=["arith", "arith-en", "arith-zh", "countdown3", "countdown4"],
)
def test_worked_solutions_score_one(task):
    examples = list(task)
    worked = [task.worked_solution(ex) for ex in examples]
    golds = [ex.answer for ex in examples]
    assert all(task.evaluate(ex, w) == 1.0 for ex, w in zip(examples, worked))
    assert all(task.reward(ex, w) == 1.0 for ex, w in zip(examples, worked))
    assert all(w.startswith("<think>") and w.endswith("</answer>") for w in worked)
    total, per_fn = combine({"accuracy": 1.0, "format": 1.0})(worked, golds, examples=examples)
    assert total == [2.0] * len(worked), per_fn
    # R1 chat-template variant
    for ex in examples[:10]:
        w = task.worked_solution(ex, template="r1")
        assert task.evaluate(ex, w, template="r1") == 1.0
        assert REWARDS["format_r1"]([w], [ex.answer]) == [1.0]
    # Bare solutions: right answer, empty thought, well formed (the format reward does not pay for thinking), in both
    # templates; guesses are mostly wrong.
    bare = [task.bare_solution(ex) for ex in examples]
    assert all(task.evaluate(ex, b) == 1.0 and format_ok(b) for ex, b in zip(examples, bare))
    bare_r1 = [task.bare_solution(ex, template="r1") for ex in examples]
    assert all(task.evaluate(ex, b, template="r1") == 1.0 and format_r1_ok(b) for ex, b in zip(examples, bare_r1))
    guesses = [task.evaluate(ex, task.bare_solution(ex, guess=True)) for ex in examples]
    assert sum(guesses) < len(examples) / 2


def test_language_variants():
    zh, en, plain = ArithTask(lang="zh")[0], ArithTask(lang="en")[0], ArithTask()[0]
    assert zh.question.startswith("计算 ") and en.question.startswith("Compute ")
    assert plain.question == plain.meta["expr"]
    assert zh.meta["lang"] == "zh" and plain.meta["lang"] == "en"
    lang_fn = REWARDS["language"]
    assert lang_fn([ArithTask(lang="zh").worked_solution(zh)], [zh.answer], lang="zh") == [1.0]
    assert lang_fn([ArithTask(lang="en").worked_solution(en)], [en.answer], lang="en") == [1.0]
    assert lang_fn([ArithTask().worked_solution(plain)], [plain.answer]) == [None]  # symbolic: no words
    assert CountdownTask(lang="zh")[0].question.startswith("用 ")
    with pytest.raises(R1kitError, match="lang"):
        ArithTask(lang="fr")


def test_prompts():
    task = ArithTask()
    ex = task[0]
    p = task.prompt(ex)
    assert isinstance(p, str) and p.endswith(f"User: {ex.question}. Assistant:") and "<think>" in p
    msgs = task.prompt(ex, template="r1")
    content = msgs[0]["content"]
    assert msgs[0]["role"] == "user" and content.startswith(ex.question) and "\\boxed{}" in content
    with pytest.raises(R1kitError, match="template"):
        task.prompt(ex, template="chatml")


def test_slicing_and_mixture():
    task = ArithTask(size=100)
    view = task[10:20]
    assert len(view) == 10 and view[0] == task[10] and view[-1] == task[19]
    assert [e.question for e in view[::3]] == [task[i].question for i in (10, 13, 16, 19)]
    sliced = ArithTask(size=100, start=5, stop=50, step=5)
    assert len(sliced) == 9 and sliced[1] == task[10]
    with pytest.raises(IndexError):
        view[10]
    mix = TaskMixture([ArithTask(size=20), CountdownTask(size=10)], seed=1)
    assert len(mix) == 30 and [mix[i] for i in range(30)] == [mix[i] for i in range(30)]
    assert {e.meta["task"] for e in mix} == {"arith", "countdown"}
    for ex in mix:
        owner = mix.tasks[ex.meta["mixture_task"]]
        assert mix.evaluate(ex, owner.worked_solution(ex)) == 1.0
    with pytest.raises(R1kitError, match="unknown task"):
        get_task("nope")


# ---------------------------------------------------------------------------------------------------------------------
# Safe countdown checker


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os')",
        "__import__('os').system('echo hi')",
        "(1).real",  # attribute access
        "().__class__",
        "abs(-3)",  # call
        "x+1",  # name
        "2**3",  # power is not allowed
        "1.5*2",  # float literal
        "True+1",  # bool literal
        "'a'*3",
        "[1][0]",
        "1 if 1 else 2",
        "lambda: 1",
        "1/0",
        "8*3-4;0",
        "(" * 300 + "1" + ")" * 300,  # too long
    ],
)
def test_safe_parser_rejects(expr):
    with pytest.raises(UnsafeExpression):
        parse_expr(expr)
    assert check_countdown(expr, [1, 2, 3], 3) is False


def test_countdown_checker():
    nums, target = [8, 3, 4], 20
    assert parse_expr("(8*3)-4") == (20, [8, 3, 4])
    assert check_countdown("(8*3)-4", nums, target)
    assert check_countdown("3*8-4", nums, target)  # any order, minimal parentheses
    assert check_countdown("8 \\times 3 - 4 = 20", nums, target)  # typeset operators, "= target" suffix
    assert not check_countdown("8*3-4 = 21", nums, target)  # wrong right-hand side
    assert not check_countdown("8*3-4+4-4", nums, target)  # 4 reused
    assert not check_countdown("8*3-4*1", nums, target)  # extra number
    assert not check_countdown("8+3+4", nums, target)  # wrong value
    assert not check_countdown("8*3", [8, 3, 4], 24)  # 4 missing
    assert check_countdown("(8/3)*(4-1)", [8, 3, 4, 1], 8)  # exact fractions: 8/3*3 = 8
    assert check_countdown("-3+8+15", [3, 8, 15], 20)  # unary minus on a given number


def test_accuracy_reward_uses_the_countdown_rule_for_countdown_examples():
    task = CountdownTask(size=5)
    examples = list(task)
    target_only = [f"<think>t</think> <answer>{ex.meta['target']}</answer>" for ex in examples]
    worked = [task.worked_solution(ex) for ex in examples]
    golds = [ex.answer for ex in examples]
    acc = REWARDS["accuracy"]
    assert acc(target_only, golds, examples=examples) == [0.0] * 5  # the bare target is not a solution
    assert acc(worked, golds, examples=examples) == [1.0] * 5
    mixed = [examples[0], ArithTask()[0]]
    completions = [worked[0], ArithTask().worked_solution(mixed[1])]
    assert acc(completions, [golds[0], mixed[1].answer], examples=mixed) == [1.0, 1.0]


def test_countdown_evaluate_extracts_the_final_answer():
    task = CountdownTask()
    ex = Example("Use 8, 3, 4 to make 20", "(8*3)-4", {"numbers": [8, 3, 4], "target": 20})
    assert task.evaluate(ex, "<think>8*3=24 24-4=20</think> <answer>8*3-4</answer>") == 1.0
    assert task.evaluate(ex, "<think>8*3-4</think> <answer>20</answer>") == 0.0
    assert task.evaluate(ex, "<think>try 8*3-4") == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# File tasks


def test_gsm8k_loaders():
    test, train = GSM8KTask(split="test"), get_task("gsm8k", split="train")
    assert len(test) == 1319 and len(train) == 7473
    assert test[0].answer == "18" and "Janet" in test[0].question and "#### 18" in test[0].meta["raw_answer"]
    assert all("," not in e.answer and "#" not in e.answer for e in test[:200])
    assert all(e.answer for e in train[:200]) and train[0].answer == "18"
    ex = test[0]
    assert test.evaluate(ex, "<think>16-3-4=9 9*2=18</think> <answer>$18</answer>") == 1.0
    assert test.evaluate(ex, "<think>16-3-4=9</think> <answer>9</answer>") == 0.0


def test_math_loaders():
    train, test = get_task("math", split="train"), get_task("math500")
    assert len(test) == 500 and test.name == "math500"
    assert test[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert train.skipped == [887, 1010, 5329, 5331] and len(train) == 7470  # rows with no answer in the source
    minerva = get_task("minerva_math")
    assert len(minerva) == 272 and minerva[0].answer == "1.6"  # last \boxed{} of the solution
    assert get_task("amc23")[0].answer == "27"  # 27.0 in the file
    assert get_task("aime24")[0].answer == "204"
    assert test.evaluate(test[0], "</think> so $\\boxed{\\left(3,\\frac{\\pi}{2}\\right)}$") == 1.0


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_errors_name_file_and_line(tmp_path):
    good = '{"problem": "1+1?", "answer": "2"}'
    bad = _write(tmp_path / "bad.jsonl", [good, "", '{"problem": "2+2?", "answer": 4', good])
    with pytest.raises(R1kitError, match=r"bad\.jsonl: line 3: invalid JSON"):
        JsonlTask(bad)
    arr = _write(tmp_path / "arr.jsonl", [good, "[1, 2]"])
    with pytest.raises(R1kitError, match=r"arr\.jsonl: line 2: expected a JSON object"):
        JsonlTask(arr)
    noq = _write(tmp_path / "noq.jsonl", [good, '{"text": "?", "answer": "1"}'])
    with pytest.raises(R1kitError, match=r"noq\.jsonl: line 2: no question field"):
        JsonlTask(noq)
    with pytest.raises(R1kitError, match="not found"):
        JsonlTask(tmp_path / "missing.jsonl")
    with pytest.raises(R1kitError, match=r"gsm\.jsonl: line 1: invalid JSON"):
        GSM8KTask(path=_write(tmp_path / "gsm.jsonl", ["{oops"]))


def test_jsonl_task_fields_and_holdout(tmp_path):
    rows = [json.dumps({"question": f"q{i}?", "answer": f"#### {i},000" if i % 2 else i}) for i in range(1, 51)]
    path = _write(tmp_path / "data.jsonl", rows + [json.dumps({"problem": "p", "solution": "so \\boxed{7}."})])
    task = JsonlTask(path)
    assert len(task) == 51 and task[-1].answer == "7" and task[0].meta["line"] == 1
    gsm = GSM8KTask(path=path, stop=3)
    assert [e.answer for e in gsm] == ["1000", "2", "3000"]
    train = JsonlTask(path, holdout="train", seed=1)
    test = JsonlTask(path, holdout="test", seed=1)
    assert len(test) == 5 and len(train) == 46
    assert not {e.question for e in train} & {e.question for e in test}
    assert [e.question for e in test] == [e.question for e in JsonlTask(path, holdout="test", seed=1)]
    assert [e.question for e in test] != [e.question for e in JsonlTask(path, holdout="test", seed=2)]


def test_benchmarks_dir_from_env(tmp_path, monkeypatch):
    _write(tmp_path / "mine.jsonl", ['{"problem": "1+1?", "answer": "2"}'])
    monkeypatch.setenv("R1KIT_BENCHMARKS", str(tmp_path))
    assert benchmarks_dir() == tmp_path
    assert len(JsonlTask("mine.jsonl")) == 1
    monkeypatch.setenv("R1KIT_BENCHMARKS", str(tmp_path / "nope"))
    with pytest.raises(R1kitError, match="not a directory"):
        benchmarks_dir()


# ---------------------------------------------------------------------------------------------------------------------
# Loopholes (issue 16): each test below fails on the code before the fix.


def _answer(text: str, template: str) -> str:
    return f"<think></think> <answer>{text}</answer>" if template == "r1-zero" else f"\n</think>\n\n$\\boxed{{{text}}}$"


@pytest.mark.parametrize("template", ["r1-zero", "r1"])
def test_arith_answer_must_be_a_literal_value(template):
    from r1kit.eval import get_bench

    bench = get_bench("arith")
    items = bench.items()[:20]
    examples = [it.example for it in items]
    restated = [_answer(ex.meta["expr"], template) for ex in examples]
    right = [_answer(ex.answer, template) for ex in examples]
    golds = [ex.answer for ex in examples]
    assert any(ex.meta["expr"] != ex.answer for ex in examples)
    # RL reward, Task.evaluate and the evaluation harness all refuse the restated question and accept the value.
    assert REWARDS["accuracy"](restated, golds, template=template, examples=examples) == [0.0] * 20
    assert [bench.task.evaluate(ex, t, template) for ex, t in zip(examples, restated)] == [0.0] * 20
    assert REWARDS["accuracy"](right, golds, template=template, examples=examples) == [1.0] * 20
    if template == "r1":  # the harness scores completions of the R1 chat prompt
        assert [s.verdict for s in bench.score(items, restated)] == ["fail"] * 20
        assert [s.verdict for s in bench.score(items, right)] == ["pass"] * 20
    # Other computations of the value are not literals either; written forms of the number are.
    ex = Example("9+8+9", "26", {"verifier": "literal"})
    forms = {"9+8+9": 0.0, "17+9": 0.0, "52/2": 0.0, "\\frac{52}{2}": 0.0, "26": 1.0, "$26$": 1.0, "26.0": 1.0,
             "+26": 1.0}
    for text, want in forms.items():
        assert ArithTask().evaluate(ex, _answer(text, "r1-zero")) == want, text


def test_countdown_restating_the_question_scores_zero_everywhere():
    from r1kit.eval import get_bench

    bench = get_bench("countdown")
    items = bench.items()[:10]
    examples = [it.example for it in items]
    golds = [ex.answer for ex in examples]
    for wrong in ("{target}", "{question}", "{target}={target}", "{gold}+{target}-{target}"):
        texts = ["x\n</think>\n\n\\boxed{" + wrong.format(target=ex.meta["target"], question=ex.question,
                                                          gold=ex.answer) + "}" for ex in examples]
        assert REWARDS["accuracy"](texts, golds, template="r1", examples=examples) == [0.0] * 10, wrong
        assert [s.verdict for s in bench.score(items, texts)] == ["fail"] * 10, wrong
        assert REWARDS["countdown"](texts, golds, template="r1") == [0.0] * 10, wrong
    worked = [bench.task.worked_solution(ex, template="r1") for ex in examples]
    assert [s.verdict for s in bench.score(items, worked)] == ["pass"] * 10
    # The countdown reward scored a completion without </think> under the R1 template, and a truncated one.
    unfinished = "8*3-4 \\boxed{8*3-4}"
    assert REWARDS["countdown"]([unfinished], ["(8*3)-4"], template="r1") == [0.0]
    done = "<think>8*3=24 24-4=20</think> <answer>8*3-4</answer>"
    assert REWARDS["countdown"]([done, done], ["(8*3)-4"] * 2, truncated=[False, True]) == [1.0, 0.0]


def test_revised_solutions_fix_confirm_placebo_slip():
    import random

    task = ArithTask(n_terms=(2, 8), ops="+", size=60)
    rng = random.Random(0)
    for ex in task:
        sols = {r: task.revised_solution(ex, r, random.Random(rng.random())) for r in
                ("fix", "confirm", "placebo", "placebo-confirm", "slip")}
        assert task.evaluate(ex, sols["slip"]) == 0.0 and "wait" not in sols["slip"]
        for r in ("fix", "confirm", "placebo", "placebo-confirm"):  # a head value, then a check
            first, check = sols[r].removeprefix("<think>").split("</think>")[0].split(" wait, ")
            assert sols[r].count("wait") == 1 and (first == ex.answer) == (r in ("confirm", "placebo-confirm"))
            answer = sols[r].split("<answer>")[1].split("<")[0]
            if r in ("fix", "confirm"):  # the whole scratchpad, and the answer is what it found
                assert check == ex.meta["scratchpad"] and answer == ex.answer
            else:  # the placebo works nothing out: it restates the head value, which stays the answer
                assert check == first == answer and "=" not in check
        assert task.evaluate(ex, sols["fix"]) == 1.0 and task.evaluate(ex, sols["confirm"]) == 1.0
        assert task.evaluate(ex, sols["placebo"]) == 0.0 and task.evaluate(ex, sols["placebo-confirm"]) == 1.0
    with pytest.raises(R1kitError, match="revision"):
        task.revised_solution(task[0], "maybe", random.Random(0))


def test_base_corpus_behaviours_come_from_the_mix_alone():
    """No loss-mask surgery: every completion token is trained; the kinds match the configured shares; bare answers
    are the gold (not planted guesses)."""
    from collections import Counter

    from r1kit.pipeline.base import BaseStageConfig, build_corpus, corpus_texts
    from r1kit.tokenizer import Tokenizer

    cfg = BaseStageConfig(task="arith", task_kw={"n_terms": (2, 8), "ops": "+"}, worked_frac=0.2, slip_frac=0.15,
                          check_frac=0.04, chat_frac=0.0, steps=100, batch_size=32)
    task = get_task("arith", "train", **cfg.task_kw)
    docs = corpus_texts(task, cfg)
    kinds = Counter(k for _, _, k in docs)
    n = len(docs)
    assert abs(kinds["bare"] / n - 0.76) < 0.03
    assert abs(kinds["slip"] / (kinds["slip"] + kinds["worked"]) - 0.15) < 0.05
    assert (kinds["fix"] + kinds["confirm"]) / n <= 0.05 and kinds["fix"] > 0 and kinds["confirm"] > 0
    assert kinds["placebo"] == 0
    bare = [(p, c) for p, c, k in docs if k == "bare"]
    answers = {p: c for p, c in bare}
    exs = {task.prompt(ex, template="r1-zero"): ex for ex in task[:2000]}
    checked = [(exs[p], c) for p, c in answers.items() if p in exs]
    assert checked and all(task.evaluate(ex, c) == 1.0 for ex, c in checked)
    tok, examples, _ = build_corpus(task, BaseStageConfig(**{**cfg.__dict__, "steps": 5}), Tokenizer.train_bpe)
    for ids, mask in examples:  # the loss covers the whole completion: a prompt block of 0s, then only 1s
        first = mask.index(1)
        assert all(mask[first:]) and not any(mask[:first])
    placebo = corpus_texts(task, BaseStageConfig(**{**cfg.__dict__, "placebo": True}))
    pk = Counter(k for _, _, k in placebo)
    assert pk["fix"] == pk["confirm"] == 0 and pk["placebo"] > 0 and pk["placebo-confirm"] > 0


def test_demo_corpus_asks_for_the_working_and_checks_stay_under_5_percent():
    """The demo base's mix (docs/BENCHMARKS.md, "Session 10"): `asked_frac` documents prefix the question with ASK and
    get the working as the answer after an empty thought (no "wait"); checks stay <= 5% of all documents; the
    placebo corpus differs from its twin only in the checks, which restate."""
    from collections import Counter

    from r1kit.pipeline.base import ASK, corpus_texts
    from r1kit.rl import zero as z

    cfg = z.demo_base("arith", z.DEMO_TASKS["arith"], 100, seed=0)
    task = get_task("arith", "train", **cfg.task_kw)
    docs = corpus_texts(task, cfg)
    kinds, n = Counter(k for _, _, k in docs), len(docs)
    assert abs(kinds["asked"] / n - cfg.asked_frac * (1 - cfg.chat_frac)) < 0.03
    assert 0.03 < (kinds["fix"] + kinds["confirm"]) / n <= 0.05
    asked = [(p, c) for p, c, k in docs if k == "asked"]
    assert all(f"User: {ASK}" in p and "wait" not in c for p, c in asked)
    assert all(c.startswith(" <think></think> <answer>") for p, c in asked)
    assert not any(ASK in p for p, c, k in docs if k != "asked")
    for p, c in asked[:50]:  # the working ends at the chain's value (strictly left to right, as its parentheses read)
        expr = p.split("User: " + ASK)[1].removesuffix(". Assistant:")
        assert c.endswith(f"={eval(expr)}</answer>") and "=" in c.split("<answer>")[1].split()[0]
    ex = task[0]  # the working is not a literal value: as an answer to the plain question it scores 0
    assert task.evaluate(ex, task.shown_solution(ex)) == 0.0
    placebo = corpus_texts(task, z.demo_base("arith", z.DEMO_TASKS["arith"], 100, seed=0, placebo=True))
    twin = {"fix": "placebo", "confirm": "placebo-confirm"}
    assert [k for *_, k in placebo] == [twin.get(k, k) for *_, k in docs]
    assert [d for d in placebo if "placebo" not in d[2]] == [d for d in docs if d[2] not in twin]
    assert not any("=" in c.split("</think>")[0] for _, c, k in placebo if k != "chat")  # no R1-Zero thought works


def test_base_cache_key_follows_the_config_and_the_corpus_version(monkeypatch):
    """A cached base is reused only for the same config and the same corpus code: session 10 changed the placebo and
    asked documents without changing their configs, and the old cache served stale bases."""
    import dataclasses

    from r1kit.pipeline import base

    cfg = base.BaseStageConfig(task="arith")
    assert base.cache_folder(cfg) == base.cache_folder(dataclasses.replace(cfg, cache=False))
    assert base.cache_folder(cfg) != base.cache_folder(dataclasses.replace(cfg, placebo=True))
    before = base.cache_folder(cfg)
    monkeypatch.setattr(base, "CORPUS_VERSION", base.CORPUS_VERSION + 1)
    assert base.cache_folder(cfg) != before
