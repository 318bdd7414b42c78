"""Function calling in DeepSeek-R1's chat-template format, mapped to and from OpenAI's `tools` API.

The R1 template (and its Distill variants) writes an assistant turn that calls tools as

    <｜Assistant｜>[content]<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
    ```json
    ARGUMENTS
    ```<｜tool▁call▁end｜>[\\n<｜tool▁call▁begin｜>...<｜tool▁call▁end｜>]<｜tool▁calls▁end｜><｜end▁of▁sentence｜>

and the tool results that follow as `<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>OUT<｜tool▁output▁end｜>` (later
outputs of the same run as `\\n<｜tool▁output▁begin｜>OUT<｜tool▁output▁end｜>`), closed by `<｜tool▁outputs▁end｜>`.
After the outputs the model writes on directly, with no `<｜Assistant｜>` tag, so an assistant turn that follows
tool outputs renders as `<｜tool▁outputs▁end｜>` + its text. The template has no place for the tool definitions
themselves: they go into the system text (which R1 merges into the first user turn), with the call format spelt
out.

The R1 renderer with tools is `tokenizer.render_r1` (the one chat renderer); this module maps OpenAI's API onto
it and parses calls back. Two deliberate choices: the DeepThink prefill (`<think>\\n`, or an empty closed thought when thinking is off) is
also written after tool outputs, so every reply of a chat starts the same way; and `tool_choice` "required" or a
named function ends the prompt with the opening of a call (after an empty thought), which forces the call.

`ToolCallParser` reads calls back out of the answer text, streaming or not: text before `<｜tool▁calls▁begin｜>`
is content (a partial marker is held back, as the reasoning split does with tags), each call is released whole
once its `<｜tool▁call▁end｜>` has arrived.
"""
from __future__ import annotations

import json
import re
import uuid

from r1kit.tokenizer import (CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, CLOSED_THOUGHT, OUTPUT_BEGIN,  # noqa: F401
                             OUTPUT_END, OUTPUTS_BEGIN, OUTPUTS_END, SEP, THINK_CLOSE, THINK_OPEN, TOOL_TOKENS,
                             format_call, tools_system_text)

_CALL = re.compile(re.escape(CALL_BEGIN) + r"(?P<type>[^\n]*?)" + re.escape(SEP) + r"(?P<name>[^\n]*)\n```(?:json)?\n"
                   r"(?P<args>.*?)\n?```\s*" + re.escape(CALL_END), re.DOTALL)


def has_tool_format(tokenizer) -> bool:
    """Whether the tokenizer knows R1's tool tokens, each as one token (R1 and the R1 Distill tokenizers do)."""
    return all(tokenizer.token_to_id(t) is not None for t in TOOL_TOKENS)


def forced_call_opening(name: str | None) -> str:
    """The answer's forced start for tool_choice "required" (any function) or a named function."""
    return CALLS_BEGIN + CALL_BEGIN + "function" + SEP + (f"{name}\n```json\n" if name else "")


class ToolCallParser:
    """Incremental extraction of R1 tool calls from the answer. `feed(delta, final)` -> (content, calls): the text
    that is plain answer, and the calls completed by this delta, as OpenAI tool calls
    {"id", "type": "function", "function": {"name", "arguments"}}.

    Args:
        opening: answer text the prompt already wrote (a forced call's opening); parsed as if generated.
    """

    def __init__(self, opening: str = ""):
        self.section = ""  # text from <｜tool▁calls▁begin｜> on (None before it)
        self.in_section = False
        self._pending = ""
        self._parsed = 0  # characters of section consumed by complete calls
        if opening:
            self.feed(opening)

    def feed(self, delta: str, final: bool = False) -> tuple[str, list[dict]]:
        content = ""
        if not self.in_section:
            text = self._pending + delta
            i = text.find(CALLS_BEGIN)
            if i < 0:
                keep = 0 if final else next((k for k in range(min(len(text), len(CALLS_BEGIN) - 1), 0, -1)
                                             if CALLS_BEGIN.startswith(text[-k:])), 0)
                self._pending = text[len(text) - keep:] if keep else ""
                return text[:len(text) - keep], []
            content, delta, self.in_section, self._pending = text[:i], text[i + len(CALLS_BEGIN):], True, ""
        self.section += delta
        calls = []
        for m in _CALL.finditer(self.section, self._parsed):
            args = m["args"].strip()
            try:
                args = json.dumps(json.loads(args), ensure_ascii=False)  # one canonical spelling when it is JSON
            except ValueError:
                pass  # passed on as written: OpenAI's arguments are model text too, and may be invalid JSON
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                          "function": {"name": m["name"].strip(), "arguments": args}})
            self._parsed = m.end()
        return content, calls
