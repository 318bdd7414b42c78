"""The reasoning split: generated text -> (reasoning_content, content), streaming or not .

DeepSeek-R1 writes its chain of thought between `<think>` and `</think>`. Since the revised chat template ends the
prompt with `<｜Assistant｜><think>\\n`, the generated text normally starts *inside* the thought and contains only
`</think>`; a reply cut at max_tokens may never close it. One state machine covers every case:

    state REASONING (the default: R1 thinks first, the template forced it)
        "<think>"  -> dropped (the tag itself is never shown)
        "</think>" -> dropped, state becomes CONTENT
        other text -> reasoning
    state CONTENT (after "</think>", or from the start when the prompt already closed the thought)
        everything, tags included, is content verbatim (a second "</think>" stays in the answer)

`ReasoningParser.feed(delta)` runs it on a stream of text deltas, holding back only a tail that could still grow into
a tag ("<", "</th", ...), so any chunking of a text (token by token, or all at once) yields the same concatenated
split: `split_reasoning(text)` is literally one `feed` plus `flush`. Empty parts come back as None, as in vLLM.

Differences from vLLM's `deepseek_r1` parser, both on inputs R1 does not produce: a "<think>" after some reasoning
text is dropped instead of discarding the text before it (vLLM keeps only what follows the first "<think>"), and an
empty reasoning part is None instead of "". Tags are matched as text, so this works for tokenizers where a tag is one
token (R1, the built-in one) and for those that spell it in pieces.

Also here, shared by the server (app.py) and the terminal chat (chat.py): `render_prompt` (the DeepThink switch
decides where the prompt leaves the thought) and `ChoiceStream` (one sample's tokens -> text deltas -> the split).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from r1kit.tokenizer import THINK_CLOSE, THINK_OPEN, Tokenizer, render_r1

if TYPE_CHECKING:
    from r1kit.engine.engine import Result

_TAGS = (THINK_OPEN, THINK_CLOSE)


def _partial_tag_len(text: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of a tag (so it may still become one)."""
    for k in range(min(len(text), len(THINK_CLOSE) - 1), 0, -1):
        tail = text[-k:]
        if any(tag.startswith(tail) for tag in _TAGS):
            return k
    return 0


def initial_reasoning_state(prompt_text: str, forced: bool = True) -> bool | None:
    """Where generation starts, judged by the prompt's last think tag: "<think>" (the R1 prefill) -> True, inside
    the thought; "</think>" (thinking switched off with an empty thought) -> False, in the answer. With no tag at all
    the template decides: `forced` (R1's, which makes the model reason first) -> True; otherwise (a model's own
    template, which may not think at all) -> None: the reply is answer unless it opens with "<think>" itself."""
    last_open, last_close = prompt_text.rfind(THINK_OPEN), prompt_text.rfind(THINK_CLOSE)
    if last_open == last_close == -1:
        return True if forced else None
    return last_open > last_close


class ReasoningParser:
    """Incremental split of generated text. `feed` and `flush` return (reasoning_delta, content_delta), "" when
    there is nothing new for that part.

    Args:
        in_reasoning: the start state; True when the prompt left the thought open (or forced it), False when the
            prompt already closed it (thinking disabled), None when the model may or may not think: the reply is
            reasoning only if it opens with "<think>" (leading whitespace aside), else all of it is answer.
    """

    def __init__(self, in_reasoning: bool | None = True):
        self.optional = in_reasoning is None
        self.in_reasoning = in_reasoning is not False
        self._pending = ""  # held-back text that may be the start of a tag (REASONING state only)

    def feed(self, delta: str) -> tuple[str, str]:
        if self.optional:  # undecided: wait until the reply's start shows whether it opens a thought
            head = self._pending + delta
            start = head.lstrip()
            if THINK_OPEN.startswith(start) and len(start) < len(THINK_OPEN):
                self._pending = head
                return "", ""
            self.optional, self._pending = False, ""
            self.in_reasoning = start.startswith(THINK_OPEN)
            delta = start if self.in_reasoning else head
        if not self.in_reasoning:
            return "", delta
        text = self._pending + delta
        reasoning: list[str] = []
        while True:
            hits = [(i, tag) for tag in _TAGS if (i := text.find(tag)) >= 0]
            if not hits:
                break
            i, tag = min(hits)
            reasoning.append(text[:i])
            text = text[i + len(tag):]
            if tag == THINK_CLOSE:  # the thought is over: the rest (tags included) is content, verbatim
                self.in_reasoning, self._pending = False, ""
                return "".join(reasoning), text
        keep = _partial_tag_len(text)
        self._pending = text[len(text) - keep:] if keep else ""
        reasoning.append(text[:len(text) - keep])
        return "".join(reasoning), ""

    def flush(self) -> tuple[str, str]:
        """End of the text: release a held-back partial tag (it never completed, so it is plain reasoning)."""
        pending, self._pending = self._pending, ""
        if self.optional:  # the reply ended before it showed a thought: it was all answer
            self.optional, self.in_reasoning = False, False
        return (pending, "") if self.in_reasoning else ("", pending)


def split_reasoning(text: str, in_reasoning: bool | None = True) -> tuple[str | None, str | None]:
    """The whole-text split: (reasoning, content), each None when empty.

    >>> split_reasoning("abc</think>\\n\\nxyz")
    ('abc', '\\n\\nxyz')
    >>> split_reasoning("abc")
    ('abc', None)
    """
    p = ReasoningParser(in_reasoning)
    r1, c1 = p.feed(text)
    r2, c2 = p.flush()
    return (r1 + r2) or None, (c1 + c2) or None


# ---------------------------------------------------------------------------------------------------------------------
# prompts and tokens -> text deltas -> (reasoning, content)


class ChoiceStream:
    """Turns one sample's tokens into text deltas, split into (reasoning, content).

    In order: incremental detokenization (a partial UTF-8 character waits for its next token); the reasoning split
    (`parser` None = no split: everything is content); then, on the answer only, stop strings (text that could be the
    start of one is held back; the answer is cut before the first match, while the thought is never cut), the
    trimming of the answer's leading blank lines (as DeepSeek's API returns it; `trim_answer`) and the tool-call
    parser (`tools`, see tools.py; the calls gathered are in `tool_calls`). Also the reasoning-token count for usage
    (tokens up to and including the `</think>` token). Streaming and non-streaming responses both run through it,
    so they always agree.
    """

    def __init__(self, tokenizer: Tokenizer, stop: list[str], parser: ReasoningParser | None,
                 trim_answer: bool = False, tools=None):
        self.tok, self.stop, self.parser, self.tools = tokenizer, stop, parser, tools
        self.hold = max(map(len, stop), default=1) - 1
        self.trim = trim_answer
        self._started = False  # the answer has begun (its leading blank lines are behind)
        self.ids: list[int] = []
        self._prefix = self._read = 0  # detokenizer window: ids[prefix:read] was decoded last time
        self.text = ""  # decoded so far
        self.fed = 0  # characters of text given to the parser
        self.answer = ""  # the answer as the parser released it (before the stop cut)
        self.answered = 0  # characters of answer released
        self.reasoning_tokens = 0
        self._counting = parser is not None and parser.in_reasoning
        self._close_id = tokenizer.token_to_id(THINK_CLOSE)
        self.finish_reason: str | None = None
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.tool_calls: list[dict] = []
        self._calls_taken = 0

    def add(self, token: int) -> tuple[str, str]:
        """Feed one generated token; returns the new (reasoning, content) text. Sets finish_reason "stop" when a
        stop string appears in the answer (the caller then aborts the sample)."""
        self.ids.append(token)
        if self._counting:
            self.reasoning_tokens += 1
            self._counting = token != self._close_id
        prev = self.tok.decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        new = self.tok.decode(self.ids[self._prefix:], skip_special_tokens=True)
        if len(new) <= len(prev) or new.endswith("\ufffd"):
            return "", ""
        self.text += new[len(prev):]
        self._prefix, self._read = self._read, len(self.ids)
        out = self._release(final=False)
        if self._counting and self._close_id is None and not self.parser.in_reasoning:
            self._counting = False  # "</think>" spelt in several tokens: stop at the one that completed it
        return out

    def finish(self, result: Result | None) -> tuple[str, str]:
        """The sample ended (result None: cut here by a stop string): release the rest of the text (the answer cut
        at a stop string) and flush the parsers."""
        if result is not None and self.finish_reason is None:
            full = self.tok.decode(result.token_ids, skip_special_tokens=True)  # completes a dangling character
            if full.startswith(self.text):
                self.text = full
        r, c = self._release(final=True)
        if self.finish_reason is None:
            self.finish_reason = result.finish_reason if result is not None else "stop"
        if self.tool_calls and self.finish_reason == "stop":
            self.finish_reason = "tool_calls"
        return r, c

    def take_calls(self) -> list[dict]:
        """Tool calls completed since the last take (each once), as {"index", "id", "function": {...}} dicts."""
        new = self.tool_calls[self._calls_taken:]
        self._calls_taken = len(self.tool_calls)
        return new

    def _release(self, final: bool) -> tuple[str, str]:
        if self.finish_reason is not None:  # already cut at a stop string
            return "", ""
        piece, self.fed = self.text[self.fed:], len(self.text)
        r, c = self.parser.feed(piece) if self.parser is not None else ("", piece)
        if final and self.parser is not None:
            r2, c2 = self.parser.flush()
            r, c = r + r2, c + c2
        self.answer += c
        end = len(self.answer)
        if self.stop:
            start = max(0, self.answered - self.hold)
            cuts = [i for s in self.stop if (i := self.answer.find(s, start)) >= 0]
            if cuts:
                end = min(cuts)
                self.finish_reason = "stop"
            elif not final:
                end = max(self.answered, end - self.hold)
        c, self.answered = self.answer[self.answered:end], end
        if self.trim and not self._started:
            c = c.lstrip("\r\n")
            self._started = bool(c)
        if self.tools is not None:
            c, calls = self.tools.feed(c, final=final or self.finish_reason is not None)
            self.tool_calls += [{**call, "index": len(self.tool_calls) + k} for k, call in enumerate(calls)]
        self.reasoning.append(r)
        self.content.append(c)
        return r, c

    def result_text(self) -> tuple[str | None, str | None]:
        return "".join(self.reasoning) or None, "".join(self.content) or None


def render_prompt(tokenizer: Tokenizer, messages: list[dict], template: str = "r1", thinking: bool = True,
                  encode=None, tools: list[dict] | None = None, forced: str = "",
                  prefix: str | None = None) -> tuple[list[int], str]:
    """A chat prompt's (ids, text). template "r1" (tokenizer.render_r1): DeepThink on = the R1 `<think>\\n`
    prefill, off = an empty closed thought, plus tools, a forced call opening or a reply prefix to continue;
    "model": the tokenizer's own chat template (thinking is then up to the template; `prefix` is appended after its
    generation prompt); "r1-zero": the R1-Zero prompt, for checkpoints trained with it."""
    if template == "r1":
        text = render_r1(messages, thinking=thinking, tools=tools, forced=forced, prefix=prefix)
    else:  # "model" or "r1-zero" (the R1-Zero text prompt around the last user message; the model opens <think>)
        text = tokenizer.render(messages, template=template) + (prefix or "")
    ids = (encode or tokenizer.encode)(text)
    if tokenizer.add_bos and tokenizer.bos_id is not None and ids[:1] != [tokenizer.bos_id]:
        ids.insert(0, tokenizer.bos_id)  # as Tokenizer.encode_chat: exactly one bos
    return ids, text
