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

`render_r1_chat` is the R1 chat renderer with tools: for a conversation without tools it returns exactly
`tokenizer.render_r1(messages, think_prefill=...)` (a test checks this), so it is meant to replace that function.
Two deliberate choices: the DeepThink prefill (`<think>\\n`, or an empty closed thought when thinking is off) is
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
from collections.abc import Sequence

from r1kit.errors import R1kitError
from r1kit.tokenizer import R1_ASSISTANT, R1_BOS, R1_EOS, R1_USER, THINK_CLOSE, THINK_OPEN

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
OUTPUTS_BEGIN, OUTPUTS_END = "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>"
OUTPUT_BEGIN, OUTPUT_END = "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"
TOOL_TOKENS = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP, OUTPUTS_BEGIN, OUTPUTS_END, OUTPUT_BEGIN,
               OUTPUT_END)
CLOSED_THOUGHT = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"  # what R1 writes when it skips thinking

_CALL = re.compile(re.escape(CALL_BEGIN) + r"(?P<type>[^\n]*?)" + re.escape(SEP) + r"(?P<name>[^\n]*)\n```(?:json)?\n"
                   r"(?P<args>.*?)\n?```\s*" + re.escape(CALL_END), re.DOTALL)


def has_tool_format(tokenizer) -> bool:
    """Whether the tokenizer knows R1's tool tokens, each as one token (R1 and the R1 Distill tokenizers do)."""
    return all(tokenizer.token_to_id(t) is not None for t in TOOL_TOKENS)


def format_call(name: str, arguments: str, first: bool = True) -> str:
    return f"{'' if first else chr(10)}{CALL_BEGIN}function{SEP}{name}\n```json\n{arguments}\n```{CALL_END}"


def tools_system_text(tools: Sequence[dict]) -> str:
    """The tool definitions, written for the model (the template has no slot for them)."""
    lines = ["## Tools", "", "You may call the functions below. To call one, answer with",
             CALLS_BEGIN + format_call("NAME", "ARGUMENTS AS A JSON OBJECT") + CALLS_END,
             f"and for several calls put each {CALL_BEGIN}...{CALL_END} on its own line inside the same "
             f"{CALLS_BEGIN}...{CALLS_END}. The results come back as tool outputs.", ""]
    for t in tools:
        f = t["function"]
        lines.append(f"### {f['name']}")
        if f.get("description"):
            lines.append(f["description"])
        lines.append("Parameters (JSON Schema): " + json.dumps(f.get("parameters") or {"type": "object"},
                                                                ensure_ascii=False))
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def forced_call_opening(name: str | None) -> str:
    """The answer's forced start for tool_choice "required" (any function) or a named function."""
    return CALLS_BEGIN + CALL_BEGIN + "function" + SEP + (f"{name}\n```json\n" if name else "")


def render_r1_chat(messages: Sequence[dict], tools: Sequence[dict] | None = None, thinking: bool = True,
                   forced: str = "", prefix: str | None = None) -> str:
    """An R1 chat prompt with tool calls, tool outputs, the DeepThink switch and an optional forced answer start.

    messages: {"role": "system" | "user" | "assistant" | "tool", "content": str} dicts; an assistant dict may carry
    "tool_calls" (OpenAI's shape: [{"function": {"name", "arguments"}}]). `thinking` True ends the prompt with
    `<think>\\n`, False with an empty closed thought; `forced` is text the answer must start with (the thought is then
    closed empty); `prefix` is an assistant reply to continue (chat prefix completion): it replaces the prefill unless
    it opens a thought itself, in which case it follows `<think>`-less, verbatim.
    """
    for i, m in enumerate(messages):
        if m.get("role") not in ("system", "user", "assistant", "tool") or not isinstance(m.get("content"), str):
            raise R1kitError(f"message {i}: expected a system, user, assistant or tool message with string content")
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    if tools:
        system = f"{system}\n\n{tools_system_text(tools)}" if system else tools_system_text(tools)
    if system and not any(m["role"] == "user" for m in messages):
        raise R1kitError("a system message needs a user message to merge into (R1 has no system role)")
    out, in_outputs = [R1_BOS], False
    for m in messages:
        role = m["role"]
        if role == "tool":
            out.append((f"\n{OUTPUT_BEGIN}" if in_outputs else OUTPUTS_BEGIN + OUTPUT_BEGIN) + m["content"] + OUTPUT_END)
            in_outputs = True
            continue
        if role == "user":
            content = f"{system}\n\n{m['content']}" if system else m["content"]
            system = ""
            out.append((OUTPUTS_END if in_outputs else "") + R1_USER + content)
        elif role == "assistant":
            # history keeps only the answer (the official template's content.split('</think>')[-1])
            text = m["content"].split(THINK_CLOSE)[-1]
            calls = m.get("tool_calls") or []
            if calls:
                text += CALLS_BEGIN + "".join(format_call(c["function"]["name"], c["function"]["arguments"], k == 0)
                                              for k, c in enumerate(calls)) + CALLS_END
            out.append((OUTPUTS_END if in_outputs else R1_ASSISTANT) + text + R1_EOS)
        in_outputs = False
    out.append(OUTPUTS_END if in_outputs else R1_ASSISTANT)
    if prefix is not None:
        out.append(prefix if THINK_OPEN in prefix else CLOSED_THOUGHT + prefix)
    elif forced:
        out.append(CLOSED_THOUGHT + forced)
    else:
        out.append(THINK_OPEN + "\n" if thinking else CLOSED_THOUGHT)
    return "".join(out)


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
