"""Rewards: answer extraction, format, language consistency, length, registry, and the math verifier pool."""

import json
import os
import time

import pytest

from r1kit.errors import R1kitError
from r1kit.rewards import (
    REWARDS,
    combine,
    count_words,
    extract_answer,
    format_ok,
    format_r1_ok,
    get_reward,
    get_verifier,
    language_consistency,
    last_boxed,
    math_accuracy,
    overlong_penalty,
    reflection_rate,
    verifier_stats,
)
from r1kit.rewards.verifier import fast_equal, normalize_answer
from r1kit.tasks import benchmarks_dir
from r1kit.tokenizer import R1_EOS

CASES = benchmarks_dir() / "verifier_cases.jsonl"  # ships with r1kit (data/)

# ---------------------------------------------------------------------------------------------------------------------
# Extraction (docs/EVAL.md "Scoring": no `</think>`, two, an empty thought, a box only in the thought, hedged boxes)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>7+8=15</think> <answer>15</answer>", "15"),
        ("<think>7+8=15</think> <answer> 15 </answer>" + R1_EOS, "15"),
        ("<think>hmm, so the total might be 42 \\boxed{42}", None),  # no </think>: truncated
        ("<think>a</think>b</think> <answer>3</answer>", "3"),  # two </think>: after the last
        ("<think>\n\n</think>\n\nSo $\\boxed{4}$.", "4"),  # empty thought
        ("<think>it is \\boxed{5}</think> The answer is 5.", None),  # box only inside the thought
        ("x</think>\\boxed{5} ... Actually wait, \\boxed{6}", "6"),  # hedged: the last box
        ("</think>so $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),  # nested braces
        ("</think>\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces
        ("</think>thus \\boxed 7.", "7"),
        ("</think>\\fbox{8}", "8"),
        ("</think>\\boxed{3} then \\boxed{4", None),  # cut inside the last box
        ("</think>The answer is 42.", None),  # no tag, no box: no last-number fallback
        ("<think>x</think> <answer>1</answer> <answer>2</answer>", None),  # two answers
        ("<think>x</think> <answer> </answer>", None),  # empty answer
        ("<think>x</think> </answer>5<answer>", None),  # reversed tags
        ("<think>x</think> <answer><answer>5</answer></answer>", None),  # nested
        ("<think><answer>9</answer></think> \\boxed{5}", "5"),  # tags inside the thought do not count
        ("no tags at all, \\boxed{12}", "12"),  # non-reasoning output
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_r1_template_requires_think_close():
    # With the R1 chat template the prompt opened <think>: a completion without </think> never finished thinking.
    assert extract_answer("so it is \\boxed{5}", require_think=True) is None
    assert extract_answer("so it is 5\n</think>\n\n\\boxed{5}", require_think=True) == "5"
    assert last_boxed("no box") is None


# ---------------------------------------------------------------------------------------------------------------------
# Format


@pytest.mark.parametrize(
    "text, ok",
    [
        ("<think>7+8=15</think> <answer>15</answer>", True),
        (" \n<think>a\nb</think>\n<answer>15</answer>\n", True),  # the completion may start with whitespace
        ("<think>a</think><answer>15</answer>" + R1_EOS, True),
        ("<think>a</think> <answer>1</answer> <answer>2</answer>", False),  # duplicated answer (open-r1#359)
        ("<think>a</think><think>b</think> <answer>1</answer>", False),  # duplicated think
        ("<think>a<think>b</think></think> <answer>1</answer>", False),  # nested think
        ("<think>a</think> <answer><answer>1</answer></answer>", False),  # nested answer
        ("<think>a</think> <answer></answer>", False),  # empty answer (Visual-RFT#176)
        ("<think>a</think> <answer>  \n </answer>", False),  # blank answer
        ("<think></think> <answer>1</answer>", True),  # empty thought: format does not pay for thinking
        ("<think>\n</think>\n<answer>1</answer>", True),
        ("<think>a</think> 15", False),  # answer outside the tags
        ("<think>a</think> <answer>1</answer> and also 2", False),  # text after </answer>
        ("Sure! <think>a</think> <answer>1</answer>", False),  # text before <think>
        ("<answer>1</answer> <think>a</think>", False),  # wrong order
        ("<think>a</think> <answer>1", False),  # truncated
    ],
)
def test_format(text, ok):
    assert format_ok(text) is ok
    assert REWARDS["format"]([text], ["x"]) == [float(ok)]


@pytest.mark.parametrize(
    "text, ok",
    [
        ("reasoning here\n</think>\n\nThe answer is \\boxed{3}.", True),
        ("\n</think>\n\nHello!", True),  # empty thought allowed (R1 answers trivial prompts directly)
        ("reasoning</think>", False),  # nothing after </think>
        ("reasoning</think>  \n", False),
        ("reasoning with no end", False),
        ("a</think>b</think>c", False),  # two </think>
        ("<think>a</think>b", False),  # the prompt already opened <think>
    ],
)
def test_format_r1(text, ok):
    assert format_r1_ok(text) is ok
    assert get_reward("format_r1")([text], [""]) == [float(ok)]


# ---------------------------------------------------------------------------------------------------------------------
# Language consistency (R1-v2 Eq. 7)


def test_word_segmentation():
    # English words are runs of >= 2 Latin letters; LaTeX commands, single-letter variables and numbers are not words;
    # every Han character is one Chinese word; other scripts count as "other".
    assert count_words("First compute 5*2=10, then x+y. \\frac{a}{b}") == {"en": 3, "zh": 0, "other": 0}
    assert count_words("先算 5*2=10，再算 3+10=13。") == {"en": 0, "zh": 4, "other": 0}
    assert count_words("Сначала compute α+β") == {"en": 1, "zh": 0, "other": 1}


def test_language_consistency():
    assert language_consistency("First 5*2=10, then 3+10=13.", "en") == 1.0
    assert language_consistency("先算 5*2=10，再算 3+10=13。", "zh") == 1.0
    assert language_consistency("先算 then 再算", "zh") == pytest.approx(4 / 5)  # 4 Han characters, 1 English word
    assert language_consistency("先算 then 再算", "en") == pytest.approx(1 / 5)
    assert language_consistency("5*2=10 3+10=13", "en") is None  # no words: skipped
    with pytest.raises(R1kitError, match="unknown target language"):
        language_consistency("hello", "fr")


def test_language_reward_reads_the_chain_of_thought_only():
    fn = REWARDS["language"]
    zh = "<think>先算 5*2=10，再算 3+10=13。</think> <answer>The answer is 13</answer>"
    mixed = "<think>先算 5*2=10, then 3+10=13</think> <answer>13</answer>"
    r1_style = "先算 then 再算\n</think>\n\nThe answer is 13, as computed."  # R1 template: CoT is before </think>
    assert fn([zh, mixed, r1_style], ["13"] * 3, lang="zh") == pytest.approx([1.0, 2 / 3, 4 / 5])
    assert fn([zh, mixed], ["13"] * 2, lang=["zh", "en"]) == pytest.approx([1.0, 1 / 3])
    assert fn(["<think>1+1=2</think> <answer>2</answer>"], ["2"]) == [None]
    with pytest.raises(R1kitError, match="'lang' has 1 entries for 2"):
        fn([zh, mixed], ["13"] * 2, lang=["zh"])


# ---------------------------------------------------------------------------------------------------------------------
# Length, reflection, registry


def test_overlong_soft_punishment():
    # DAPO: 0 up to max_len - cache_len, linear to -1 at max_len, -1 beyond.
    assert [overlong_penalty(n, 100, 20) for n in (10, 80, 81, 90, 100, 101)] == pytest.approx(
        [0.0, 0.0, -0.05, -0.5, -1.0, -1.0]
    )
    fn = get_reward("overlong", max_len=100, cache_len=20)
    assert fn(["a", "b"], ["", ""], lengths=[50, 95]) == pytest.approx([0.0, -0.75])
    with pytest.raises(R1kitError, match="needs lengths"):
        REWARDS["overlong"](["a"], [""])
    with pytest.raises(R1kitError, match="cache_len"):
        overlong_penalty(5, 10, 20)
    assert REWARDS["length"](["a", "b"], ["", ""], lengths=[0, 200], max_len=100) == [0.0, -1.0]


def test_reflection_rate_counts_whole_words():
    assert reflection_rate("Wait, but let me check. HOWEVER, that is wrong; verify again.") == 6.0
    assert reflection_rate("waiting checks butter") == 0.0
    assert isinstance(reflection_rate(""), float)


def test_registry_and_combine():
    assert {"accuracy", "format", "format_r1", "language", "overlong"} <= set(REWARDS)
    with pytest.raises(R1kitError, match="unknown reward"):
        get_reward("nope")
    reward = combine({"accuracy": 1.0, "format": 1.0, "language": 0.5, "overlong": 1.0},
                     params={"overlong": {"max_len": 100, "cache_len": 20}})
    completions = [
        "<think>First 7+8=15</think> <answer>15</answer>",  # right, well-formed, English
        "<think>7+8=15</think> 15",  # right, free-form answer section (scored as evaluation does), format 0
        "<think>先算 7+8=16</think> <answer>16</answer>",  # wrong, well-formed, Chinese
        "<think>7+8=15</think> so",  # no answer at all
    ]
    total, per_fn = reward(completions, ["15"] * 4, lengths=[10, 10, 90, 10], lang="en")
    assert per_fn["accuracy"] == [1.0, 1.0, 0.0, 0.0]
    assert per_fn["format"] == [1.0, 0.0, 1.0, 0.0]
    assert per_fn["language"] == [1.0, None, 0.0, None]  # None: no words in "7+8=15"
    assert per_fn["overlong"] == pytest.approx([0.0, 0.0, -0.5, 0.0])
    # language does not apply to samples 2 and 4: they count its mean over the batch, (1 + 0) / 2
    assert total == pytest.approx([2.5, 1.25, 0.5, 0.25])
    with pytest.raises(R1kitError, match="not in specs"):
        combine({"format": 1.0}, params={"overlong": {}})


def test_countdown_reward_checks_numbers_and_value():
    fn = REWARDS["countdown"]
    gold = "(8*3)-4"
    completions = [
        "<think>t</think> <answer>8*3-4</answer>",  # same value, same numbers
        "<think>t</think> <answer>(4-3)*8+12</answer>",  # other numbers
        "<think>t</think> <answer>20</answer>",  # the bare target
        "<think>t</think> <answer>__import__('os').system('true')</answer>",
    ]
    assert fn(completions, [gold] * 4) == [1.0, 0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------------------------------
# Verifier: fast path, math-verify agreement, timeouts


def test_fast_path_normalisation():
    assert normalize_answer(" $7,425,000$. ") == "7425000"
    assert normalize_answer("\\boxed{11,\\!111}") == "11111"
    assert fast_equal("025", "25") is True  # AIME leading zeros
    assert fast_equal("18", "19") is False
    assert fast_equal("32349", "32, 349") is None  # a tuple, not a number: left to math-verify
    assert fast_equal("\\frac{1}{2}", "0.5") is None


def test_math_accuracy_api_returns_floats():
    before = verifier_stats()
    right = math_accuracy("<think>5*2=10 3+10=13</think> <answer>13</answer>", "13")
    wrong = math_accuracy("<think>5*2=10 3+10=13</think> <answer>14</answer>", "13")
    assert (right, wrong) == (1.0, 0.0) and type(right) is float and type(wrong) is float
    after = verifier_stats()
    assert after["fast_path"] - before["fast_path"] == 2 and after["pool"] == before["pool"]  # no SymPy needed
    # Through math-verify in the worker pool:
    assert math_accuracy("<think>half</think> <answer>\\frac{2}{4}</answer>", "0.5") == 1.0
    assert math_accuracy("so x</think> The answer is $\\boxed{2\\sqrt{2}}$.", "2") == 0.0  # 4 vs 4*sqrt(2) guard
    assert math_accuracy("<think>no end \\boxed{13}", "13") == 0.0


def test_accuracy_reward_context():
    fn = REWARDS["accuracy"]
    done = "<think>x</think> <answer>7</answer>"
    assert fn([done, done], ["7", "7"], truncated=[False, True]) == [1.0, 0.0]
    assert fn(["x \\boxed{7}"], ["7"], template="r1") == [0.0]  # R1 template: no </think>, no answer
    assert fn(["x\n</think>\n\n\\boxed{7}"], ["7"], template="r1") == [1.0]


def test_accuracy_rejects_hedged_answers():
    # "A or B or C" answers (Visual-RFT#79) and sets that contain the gold are not the gold.
    hedges = ["5 or 6", "5, 6", "\\{5, 6\\}", "x=5 or x=6", "5 \\text{ or } 6", "1,2,3,4,5,6", "\\pm 5"]
    completions = [f"<think>t</think> <answer>{h}</answer>" for h in hedges]
    assert REWARDS["accuracy"](completions, ["5"] * len(hedges)) == [0.0] * len(hedges)
    assert REWARDS["accuracy"](["<think>t</think> <answer>x = 5</answer>"], ["5"]) == [1.0]


def test_verifier_cases_agreement():
    """Agreement of `verify(gold, prediction)` (gold parsed with LaTeX + expression extraction, bare golds wrapped in
    $...$; prediction parsed from the free-form text with boxed answers first) with `expected` on
    data/verifier_cases.jsonl. Measured: 31/31 = 1.00 with math-verify 0.9.0.

    Known math-verify 0.9.0 gaps (docs/EVAL.md, "The math verifier"), not covered by the 31 rows and so not asserted
    here: "3e5" in prose reads as 3; `1 - \\frac{1}{\\mathrm{e}}` parses as 1; a gold "1331 and 1728" without $ parses to 1728 only
    (r1kit wraps bare golds in $...$, which gives the set); gold 10 accepts \\boxed{10\\%}; no degree/radian conversion.
    """
    rows = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    got = get_verifier().verify_batch([r["gold"] for r in rows], [r["prediction"] for r in rows])
    disagree = [r["id"] for r, g in zip(rows, got) if int(g) != r["expected"]]
    agreement = 1 - len(disagree) / len(rows)
    print(f"verifier_cases agreement: {len(rows) - len(disagree)}/{len(rows)} = {agreement:.3f}; disagree: {disagree}")
    assert agreement >= 0.95, disagree


def test_pathological_answer_times_out_and_pool_recovers():
    timeout = 1.0
    v = get_verifier()
    assert v.equivalent(["\\frac{1}{2}"], ["0.5"]) == [True]  # workers up before timing
    before = v.stats()
    t0 = time.monotonic()
    got = v.equivalent(["1", "\\frac{1}{2}"], ["\\boxed{9^{9^{9^{9}}}}", "\\frac{3}{6}"], timeout_s=timeout)
    elapsed = time.monotonic() - t0
    assert got == [False, True]  # the stuck item scores 0; its neighbour is rerun on a fresh pool and still scores
    assert elapsed < timeout + 2.0, elapsed
    after = v.stats()
    assert after["timeouts"] - before["timeouts"] == 1
    assert after["restarts"] - before["restarts"] == 1
    # The pool works afterwards, through the public API too.
    assert math_accuracy("</think> \\boxed{\\dfrac{1}{3}}", "1/3") == 1.0
    assert v.equivalent(["\\sqrt{2}"], ["\\sqrt{3}"]) == [False]


# ---------------------------------------------------------------------------------------------------------------------
# Loopholes (issue 16): each test below fails on the code before the fix.


@pytest.mark.parametrize("fmt, thought, answer", [
    ("format", "<think>{}</think> <answer>16</answer>", None),
    ("format_r1", "{}\n</think>\n\nThe answer is $\\boxed{{16}}$.", None),
])
def test_format_reward_does_not_pay_for_thinking(fmt, thought, answer):
    # An empty thought followed by a valid answer is as well formed as a long one: thinking must earn its place
    # through accuracy, not through the format reward.
    texts = [thought.format(t) for t in ("", "\n", "9+7=16", "First 9+7=16, then check it again.")]
    assert REWARDS[fmt](texts, ["16"] * len(texts)) == [1.0] * len(texts)


def test_not_applicable_reward_is_neutral_between_thinking_and_not():
    # Same prompt, same right answer, same format: an empty thought, a wordless thought, no thought at all and a
    # one-word thought must get the same total. The language reward does not apply to the first three (None).
    class Ex:
        question, answer = "9+7", "16"

    language_only, _ = combine({"language": 1.0})(["<think></think> <answer>16</answer>",
                                                    "<think>sum</think> <answer>16</answer>"], ["16"] * 2)
    assert language_only[0] == language_only[1] == 1.0
    texts = ["<think></think> <answer>16</answer>", "<think>9+7=16</think> <answer>16</answer>",
             "<answer>16</answer>", "<think>sum</think> <answer>16</answer>"]
    reward = combine({"accuracy": 1.0, "format": 1.0, "language": 1.0})
    total, per_fn = reward(texts, ["16"] * 4, examples=[Ex()] * 4)
    assert per_fn["language"] == [None, None, None, 1.0]
    assert per_fn["format"] == [1.0, 1.0, 0.0, 1.0]  # no <think> block at all is still a format error
    assert total[0] == total[1] == total[3] == pytest.approx(3.0)
    # Neutral means "as good as the samples of the same prompt it applies to", never a fixed 0 or 1.
    mixed = ["<think></think> <answer>16</answer>", "<think>sum 合</think> <answer>16</answer>"]  # language 1/2
    total, _ = reward(mixed, ["16"] * 2, examples=[Ex()] * 2)
    assert total == pytest.approx([2.5, 2.5])


def test_neutral_fill_is_per_prompt_group():
    from r1kit.rewards import neutral_fill

    assert neutral_fill([None, 1.0, 0.0, None, None, 0.5], [[0, 1, 2], [3, 4], [5]]) == [0.5, 1.0, 0.0, 0.0, 0.0, 0.5]


def test_truncated_completions_score_zero_in_every_answer_reward():
    done = "<think>8*3=24 24-4=20</think> <answer>8*3-4</answer>"
    reward = combine({"accuracy": 1.0, "countdown": 1.0})

    class Ex:
        question, answer = "Use 8, 3, 4 to make 20", "(8*3)-4"
        meta = {"verifier": "countdown", "numbers": [8, 3, 4], "target": 20}

    total, per_fn = reward([done, done], ["(8*3)-4"] * 2, examples=[Ex(), Ex()], truncated=[False, True])
    assert per_fn == {"accuracy": [1.0, 0.0], "countdown": [1.0, 0.0]} and total == [2.0, 0.0]
    total, _ = reward([done], ["(8*3)-4"], examples=[Ex()])  # the keyword stays optional
    assert total == [2.0]


ONE_PATH_CASES = [  # (gold, completion after the R1 prompt)
    ("42", "x</think>The answer is 42."),  # free-form answer section: math-verify reads it
    ("6", "x</think>\\boxed{5} ... wait, \\boxed{\\frac{12}{2}}"),  # hedged: the last box answers
    ("5", "x</think><answer>5</answer>"),
    ("5", "so \\boxed{5}\n</think>\n\nI am not sure."),  # box inside the thought only
    ("5", "I think the answer is \\boxed{5}"),  # never finished thinking
]


def test_rl_accuracy_and_evaluation_share_one_extraction():
    from r1kit.eval.benchmarks import score_math
    from r1kit.tasks import Example, Task

    golds, texts = [g for g, _ in ONE_PATH_CASES], [t for _, t in ONE_PATH_CASES]
    rl = REWARDS["accuracy"](texts, golds, template="r1")
    harness = [float(s.correct) for s in score_math(golds, texts)]
    task = [Task().evaluate(Example("q", g), t, template="r1") for g, t in zip(golds, texts)]
    assert rl == harness == task == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_boxes_side_by_side_form_one_answer_but_a_hedge_does_not():
    # One extraction for RL and evaluation must keep what the harness accepted before: several boxes listed as one
    # answer (docs/EVAL.md, "Scoring") are joined; a box after other words is a new answer.
    from r1kit.rewards import extract

    assert extract("x</think>So \\[\\boxed{(1, 2)}, \\boxed{(2, 1)}\\]").answer == "(1, 2), (2, 1)"
    assert extract("x</think>$\\boxed{1}$ and $\\boxed{2}$").answer == "1, 2"
    assert extract("x</think>\\boxed{5} ... wait, \\boxed{6}").answer == "6"
    assert extract("x</think>\\boxed{5} or \\boxed{6}").answer == "6"
    gold = "$(2,1),(1,2)$"
    assert REWARDS["accuracy"](["x</think>\\boxed{(1, 2)}, \\boxed{(2, 1)}"], [gold], template="r1") == [1.0]

SCORE_SNIPPET = ("from r1kit.rewards.verifier import Verifier\n"
                 "v = Verifier(max_workers=1, timeout_s=30)\n"
                 "print(v.equivalent(['\\\\frac{1}{2}', '3'], ['0.5', '4']), v.stats()['pool'])\n")


@pytest.mark.parametrize("how", ["python -c", "heredoc", "plain script", "thread in a script"])
def test_verifier_works_without_a_main_guard(how, tmp_path):
    """A `python -c` one-liner, a heredoc script (`python - <<EOF`) and a plain script that scores from a thread, none
    guarded by `if __name__ == "__main__":`, get math-verify's answers (the pool never re-imports their main)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    if how == "python -c":
        r = subprocess.run([sys.executable, "-c", SCORE_SNIPPET], capture_output=True, text=True, env=env, timeout=120)
    elif how == "heredoc":
        r = subprocess.run(f"{sys.executable} - <<'EOF'\n{SCORE_SNIPPET}EOF\n", shell=True, capture_output=True,
                           text=True, env=env, timeout=120, cwd=tmp_path)
    elif how == "plain script":
        (tmp_path / "score.py").write_text(SCORE_SNIPPET)
        r = subprocess.run([sys.executable, str(tmp_path / "score.py")], capture_output=True, text=True, env=env,
                           timeout=120)
    else:
        script = tmp_path / "score.py"
        body = "".join("    " + line + "\n" for line in SCORE_SNIPPET.splitlines())
        script.write_text(f"import threading\ndef work():\n{body}t = threading.Thread(target=work)\nt.start()\nt.join()\n")
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[True, False] 1", (r.stdout, r.stderr[-1000:])
