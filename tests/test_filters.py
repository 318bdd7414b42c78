"""Readability filters, the R1 reformat, decontamination and the bilingual task (pipeline/filters.py, decontam.py)."""
import json

import torch

from r1kit.pipeline.decontam import NgramIndex, benchmark_files, benchmark_questions, eval_index, ngrams
from r1kit.pipeline.filters import (FilterConfig, language_ok, no_code_block, paragraphs_ok, readability,
                                    reformat, repeat_fraction, repetition_ok, units)
from r1kit.tasks import MixedArithTask
from r1kit.tasks import get_task

torch.set_num_threads(1)

ZH = "先算 4+3=7，再算 7+1=8。"
MIXED = "先算 4+3=7, then 7+1=8。"
EN = "First 4+3=7, then 7+1=8."


# -- language mixing ---------------------------------------------------------------------------------------------

def test_language_keeps_single_language_cot():
    assert language_ok(ZH, "zh")
    assert language_ok(EN, "en")
    assert language_ok("4+3=7 7+1=8", "zh")  # no words: nothing to judge


def test_language_drops_mixed_cot():
    assert not language_ok(MIXED, "zh")  # 2 Han characters, 1 English word: 0.67
    assert not language_ok(ZH, "en")
    assert language_ok(MIXED, "zh", min_consistency=0.6)


# -- repetition --------------------------------------------------------------------------------------------------

def test_repetition_keeps_ordinary_scratchpads():
    assert repetition_ok(ZH)
    assert repetition_ok("先算 6+6=12，再算 12+5=17，再算 17+5=22，再算 22+4=26。")
    assert repeat_fraction("a b c") == 0.0  # fewer units than n


def test_repetition_drops_loops():
    loop = "7+1=8 " * 10
    assert repeat_fraction(loop) > 0.5
    assert not repetition_ok(loop)
    assert not repetition_ok("wait let me check again. " * 6)


def test_units_split_words_numbers_han_and_symbols():
    assert units("First 12+3，再算") == ["first", "12", "+", "3", "，", "再", "算"]


# -- long paragraphs and code blocks -----------------------------------------------------------------------------

def test_paragraphs():
    assert paragraphs_ok("short one\n\nshort two", max_paragraph=20)
    assert not paragraphs_ok("short\n\n" + "x" * 21, max_paragraph=20)
    assert paragraphs_ok("x" * 15 + "\n" + "y" * 15, max_paragraph=40)  # one paragraph of 31 characters


def test_code_blocks():
    assert no_code_block("4+3=7")
    assert not no_code_block("let me code it\n```python\nprint(4+3)\n```")


def test_readability_names_the_failing_filter():
    cfg = FilterConfig(max_paragraph=50)
    assert readability(ZH, "zh", cfg) is None
    assert readability(MIXED, "zh", cfg) == "language_mixing"
    assert readability("```\n7\n```", "zh", cfg) == "code_block"
    assert readability("7+1=8 " * 10, "zh", cfg) == "repetition"
    assert readability("先算 " + "再算".join(f"{i}+1={i + 1}" for i in range(20)), "zh", cfg) == "long_paragraph"
    assert readability("  ", "zh", cfg) == "empty_cot"


# -- reformat into the R1 output pattern -------------------------------------------------------------------------

def test_reformat_r1_zero_completion():
    out = reformat(f"<think>{ZH}</think> <answer>8</answer>", "r1-zero", "zh")
    assert out == f"<think>\n{ZH}\n</think>\n\n答案是 $\\boxed{{8}}$。"
    assert reformat(f"<think>{EN}</think> <answer>8</answer>", "r1-zero", "en").endswith("The answer is $\\boxed{8}$.")


def test_reformat_r1_completion_keeps_its_summary():
    out = reformat(f"{ZH}\n</think>\n\n答案是 $\\boxed{{8}}$。", "r1", "zh")
    assert out == f"<think>\n{ZH}\n</think>\n\n答案是 $\\boxed{{8}}$。"


def test_reformat_without_answer():
    assert reformat("<think>4+3=7</think>", "r1-zero", "en") is None
    assert reformat("4+3=7 no closing tag", "r1", "en") is None


# -- decontamination ---------------------------------------------------------------------------------------------

def test_ngrams_short_text_is_one_gram():
    assert ngrams("计算 1+2", 8) == {("计", "算", "1", "+", "2")}
    assert len(ngrams("a b c d e f g h i", 8)) == 2


def test_decontam_flags_benchmark_overlap(tmp_path):
    q = "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning."
    (tmp_path / "bench_test.jsonl").write_text(json.dumps({"question": q}) + "\n")
    (tmp_path / "bench_train.jsonl").write_text(json.dumps({"problem": "Tom has 3 apples and buys 4 more."}) + "\n")
    files = benchmark_files(tmp_path)
    assert [f.name for f in files] == ["bench_test.jsonl"]  # training sets are not eval sets
    index = NgramIndex(8).add_texts(benchmark_questions(files))
    assert index.contaminated("Please solve: janet's ducks lay 16 eggs per day, she eats three for breakfast!")
    assert not index.contaminated("Tom has 3 apples and buys 4 more.")
    assert not index.contaminated("Janet's cat sleeps all day long and never lays any eggs at all.")


def test_decontam_flags_synthetic_test_questions():
    test = [ex.question for ex in get_task("arith", split="test", size=300, lang="zh")]
    train = [ex.question for ex in get_task("arith", split="train", size=800, lang="zh")]
    index = NgramIndex(13).add_texts(test)
    assert all(index.contaminated(q) for q in test)
    assert index.contaminated(" " + test[3].replace(" ", "  "))  # whitespace does not hide a copy
    assert not any(index.contaminated(q) for q in train)  # the splits are disjoint by construction
    # with n=8, "计算 3+1+4+8" shares the 8-gram "计算 3+1+4+" with the test question "计算 3+1+4+9": a false
    # positive, which is why sampling stages default to n=13 (short questions are then compared whole)
    assert NgramIndex(8).add_texts(["计算 3+1+4+9"]).contaminated("计算 3+1+4+8")
    assert not NgramIndex(13).add_texts(["计算 3+1+4+9"]).contaminated("计算 3+1+4+8")


def test_shipped_benchmarks_are_indexed():
    files = benchmark_files()
    names = {f.name for f in files}
    assert "math500.jsonl" in names and "gsm8k_train.jsonl" not in names and "verifier_cases.jsonl" not in names
    q = json.loads(next(f for f in files if f.name == "math500.jsonl").read_text().splitlines()[0])["problem"]
    assert eval_index(8, files=files).contaminated(q)


# -- the bilingual task ------------------------------------------------------------------------------------------

def test_mixed_arith_questions_match_arith_and_cots_mix():
    mixed = MixedArithTask(split="train", size=200)
    exs = [mixed[i] for i in range(200)]
    assert all(language_ok(ex.meta["scratchpad_clean"], "zh") for ex in exs)
    n_mixed = sum(not language_ok(ex.meta["scratchpad"], "zh") for ex in exs)
    assert 0.3 < n_mixed / len(exs) < 0.9  # mix=0.3 per connective, 2-4 connectives
    assert MixedArithTask(size=5, mix=0.0)[0].meta["scratchpad"] == MixedArithTask(size=5)[0].meta["scratchpad_clean"]
