"""The reasoning split (docs/ARCHITECTURE.md 8.1): whole text, token by token, and every other chunking."""
import random

import pytest

from r1kit.serve.reasoning import ChoiceStream, ReasoningParser, initial_reasoning_state, render_prompt, split_reasoning
from r1kit.tokenizer import Tokenizer

# the reference cases of the split
CASES = [
    ("abc</think>\n\nxyz", ("abc", "\n\nxyz")),
    ("<think>abc</think>xyz", ("abc", "xyz")),
    ("abc", ("abc", None)),
    ("abc</think>", ("abc", None)),
    ("<think>\n\n</think>\n\nanswer", ("\n\n", "\n\nanswer")),
    ("abc</think>x</think>y", ("abc", "x</think>y")),  # a second </think> stays in content
]
MORE = [  # edge cases of the same state machine
    ("", (None, None)),
    ("</think>", (None, None)),
    ("</think>answer", (None, "answer")),
    ("a <thin", ("a <thin", None)),  # a partial tag that never completes is plain text
    ("x</thinkk>y", ("x</thinkk>y", None)),
    ("r</think><think>c", ("r", "<think>c")),  # after the thought, tags are content verbatim
    ("<<think>a</</think>b", ("<a</", "b")),
]


def stream(chunks, in_reasoning=True):
    """Feed chunks; return (joined reasoning, joined content, per-chunk outputs)."""
    p = ReasoningParser(in_reasoning)
    outs = [p.feed(c) for c in chunks] + [p.flush()]
    r, c = "".join(o[0] for o in outs), "".join(o[1] for o in outs)
    return r or None, c or None, outs


@pytest.mark.parametrize("text,expected", CASES + MORE)
def test_non_streaming_split(text, expected):
    assert split_reasoning(text) == expected


@pytest.mark.parametrize("text,expected", CASES + MORE)
def test_token_by_token_concatenates_to_the_split(text, expected):
    tok = Tokenizer.builtin()  # "<think>" and "</think>" are single tokens, as in R1's tokenizer
    ids = tok.encode(text)
    deltas = [tok.decode([i]) for i in ids]
    assert "".join(deltas) == text
    assert stream(deltas)[:2] == expected
    assert stream(list(text))[:2] == expected  # character by character: tags arrive in pieces


@pytest.mark.parametrize("text,expected", CASES + MORE)
def test_any_chunking_gives_the_same_split(text, expected):
    rng = random.Random(0)
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 4))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert stream(chunks)[:2] == expected, chunks


def test_single_tag_deltas_emit_nothing_and_mixed_deltas_split():
    p = ReasoningParser()
    assert p.feed("<think>") == ("", "")
    assert p.feed("x</think>y") == ("x", "y")  # reasoning "x" + content "y"
    assert not p.in_reasoning
    assert p.feed("</think>") == ("", "</think>")  # after </think> every delta is content
    assert p.feed("z") == ("", "z")
    p = ReasoningParser()
    assert p.feed("a") == ("a", "") and p.feed("</think>") == ("", "")


def test_no_think_tag_anywhere_is_reasoning_until_close():
    _, _, outs = stream(["I ", "think", " so"])
    assert [o for o in outs if o != ("", "")] == [("I ", ""), ("think", ""), (" so", "")]
    assert stream(["all", " reasoning"]) [:2] == ("all reasoning", None)  # truncated, never closed


def test_thinking_disabled_starts_in_content():
    assert split_reasoning("answer </think> text", in_reasoning=False) == (None, "answer </think> text")
    assert stream(["ans", "wer"], in_reasoning=False)[:2] == (None, "answer")


def test_initial_state_from_the_prompt():
    assert initial_reasoning_state("<｜User｜>Hi<｜Assistant｜><think>\n")  # the R1 prefill: inside the thought
    assert initial_reasoning_state("<｜User｜>Hi<｜Assistant｜>")  # no tag: R1 thinks first
    assert not initial_reasoning_state("<｜Assistant｜><think>\n\n</think>\n\n")  # thinking switched off
    assert initial_reasoning_state("<｜Assistant｜>A<｜end▁of▁sentence｜><｜User｜>q<｜Assistant｜><think>\n")


# --------------------------------------------------------------------------------------------------------------
# ChoiceStream: tokens -> text deltas -> split (what the server and the terminal chat stream)

class _R:  # the fields of engine.Result that ChoiceStream reads
    def __init__(self, ids, reason="stop"):
        self.token_ids, self.finish_reason = ids, reason


def run_stream(tok, ids, stop=(), in_reasoning=True):
    ch = ChoiceStream(tok, list(stop), ReasoningParser(in_reasoning))
    deltas = [ch.add(t) for t in ids]
    deltas.append(ch.finish(_R(ids) if ch.finish_reason is None else None))
    return ch, deltas


def test_choice_stream_waits_for_whole_characters_and_matches_the_split():
    tok = Tokenizer.train_bpe(["plain words", "more words here"], vocab_size=300)  # no merges for emoji bytes
    text = "think é😀 deeply</think>\n\nanswer 😀!"
    ids = tok.encode(text)
    assert len(ids) > len(text.replace("</think>", "#"))  # multi-byte characters span several tokens
    ch, deltas = run_stream(tok, ids)
    assert all("\ufffd" not in r + c for r, c in deltas)
    joined = ("".join(r for r, _ in deltas) or None, "".join(c for _, c in deltas) or None)
    assert joined == split_reasoning(text) == ch.result_text()
    assert ch.reasoning_tokens == ids.index(tok.token_to_id("</think>")) + 1 and ch.finish_reason == "stop"


def test_choice_stream_cuts_at_stop_strings_across_tokens():
    tok = Tokenizer.builtin()
    text = "abc</think>the answer is STOP here"
    ch, deltas = run_stream(tok, tok.encode(text), stop=["STOP"])
    assert ch.result_text() == ("abc", "the answer is ") and ch.finish_reason == "stop"
    assert "".join(c for _, c in deltas) == "the answer is "  # nothing of "STOP" ever streamed


def test_render_prompt_thinking_switch():
    tok = Tokenizer.builtin()
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    ids, text = render_prompt(tok, msgs, thinking=True)
    assert text == "<｜begin▁of▁sentence｜><｜User｜>S\n\nHi<｜Assistant｜><think>\n" and ids.count(tok.bos_id) == 1
    _, off = render_prompt(tok, msgs, thinking=False)
    assert off.endswith("<｜Assistant｜><think>\n\n</think>\n\n") and not initial_reasoning_state(off)


def test_optional_thought_for_templates_that_may_not_think():
    """--template model: no tag in the prompt -> None: the reply is answer unless it opens with <think>."""
    assert initial_reasoning_state("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", forced=False) is None
    assert initial_reasoning_state("x<think>\n", forced=False) is True
    for text, want in [("plain answer", (None, "plain answer")), ("<think>r</think>a", ("r", "a")),
                       ("\n<think>r</think>a", ("r", "a")), ("<thi", (None, "<thi")), ("", (None, None)),
                       ("a <think> b", (None, "a <think> b"))]:
        assert split_reasoning(text, in_reasoning=None) == want, text
        assert stream(list(text), in_reasoning=None)[:2] == want, text


def test_stop_strings_never_cut_the_thought_and_the_answer_is_trimmed():
    tok = Tokenizer.builtin()
    ids = tok.encode("STOP in thought</think>\n\nanswer STOP here")
    ch = ChoiceStream(tok, ["STOP"], ReasoningParser(True), trim_answer=True)
    for t in ids:
        ch.add(t)
        if ch.finish_reason:
            break
    ch.finish(None)
    assert ch.result_text() == ("STOP in thought", "answer ") and ch.finish_reason == "stop"


# --------------------------------------------------------------------------------------------------------------
# the R1 renderer with tools, and tool calls parsed back

def test_render_r1_with_tool_calls_and_outputs():
    from r1kit.tokenizer import render_r1

    msgs = [{"role": "user", "content": "Q"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "f", "arguments": '{"a": 1}'}}, {"function": {"name": "g", "arguments": "{}"}}]},
            {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}]
    text = render_r1(msgs, thinking=False)
    assert text == (
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n"
        '```json\n{"a": 1}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>g\n```json\n{}\n```'
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>1"
        "<｜tool▁output▁end｜>\n<｜tool▁output▁begin｜>2<｜tool▁output▁end｜><｜tool▁outputs▁end｜><think>\n\n</think>\n\n")
    with_tools = render_r1(msgs[:1], tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert "### f" in with_tools and with_tools.index("### f") < with_tools.index("Q<｜Assistant｜>")


def test_tool_call_parser_any_chunking_gives_the_same_calls():
    from r1kit.serve.tools import ToolCallParser

    text = ('Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{"x": [1, 2]}\n```'
            '<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>g\n```json\nnot json\n```<｜tool▁call▁end｜>'
            '<｜tool▁calls▁end｜>')
    rng = random.Random(0)
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(text) + 1), k=rng.randint(0, 6)))
        p, content, calls = ToolCallParser(), "", []
        for a, b in zip([0, *cuts], [*cuts, len(text)]):
            c, new = p.feed(text[a:b])
            content, calls = content + c, calls + new
        assert content == "Let me check."
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == \
            [("f", '{"x": [1, 2]}'), ("g", "not json")]
    assert ToolCallParser().feed("a <｜tool", final=True) == ("a <｜tool", [])  # never completed: plain text
