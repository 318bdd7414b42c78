"""Tokenizer wrapper and the one chat-template renderer (docs/ARCHITECTURE.md section 7, docs/RECIPE.md section 2).

`Tokenizer` wraps a HF `tokenizers.Tokenizer` loaded from `tokenizer.json` (+ `tokenizer_config.json`), built by the
GGUF loader, or built in (`Tokenizer.builtin()`, a ~106-token character-level vocabulary for offline demos and tests).
Every prompt string in r1kit comes from the module-level renderers below; nothing else formats chat turns.

    tok = Tokenizer.from_file("ckpt/")
    ids = tok.encode_chat([{"role": "user", "content": "1+1?"}])  # bos + <｜User｜>1+1?<｜Assistant｜><think>\\n
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.ext
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers

from r1kit.errors import R1kitError, file_error

# `｜` is U+FF5C and `▁` is U+2581: the ASCII look-alikes `|` and `_` tokenize differently.
R1_BOS = "<｜begin▁of▁sentence｜>"
R1_EOS = "<｜end▁of▁sentence｜>"
R1_USER = "<｜User｜>"
R1_ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

# [R1-v1] Table 1, verbatim; `prompt` is replaced by the question, so the tail reads "User: {question}. Assistant:".
R1_ZERO_PREFIX = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>."
)
# R1's tool-call tokens (the R1 and R1 Distill templates); ids only where the tokenizer has them
CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
OUTPUTS_BEGIN, OUTPUTS_END = "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>"
OUTPUT_BEGIN, OUTPUT_END = "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"
TOOL_TOKENS = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP, OUTPUTS_BEGIN, OUTPUTS_END, OUTPUT_BEGIN,
               OUTPUT_END)
CLOSED_THOUGHT = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"  # what R1 writes when it skips thinking

TEMPLATES = ("r1", "r1-zero", "model")
ROLES = ("system", "user", "assistant")

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


# ---------------------------------------------------------------------------------------------------------------------
# Chat templates


def _check_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise R1kitError("chat has no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else m
            raise R1kitError(f"message {i}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise R1kitError(f"message {i}: content must be a string, got {type(m.get('content')).__name__}")


def format_call(name: str, arguments: str, first: bool = True) -> str:
    """One tool call as R1 writes it (later calls of a turn start on a new line)."""
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


def render_r1(messages: Sequence[Message], add_generation_prompt: bool = True, think_prefill: bool = True,
              tools: Sequence[dict] | None = None, thinking: bool = True, forced: str = "",
              prefix: str | None = None) -> str:
    """DeepSeek-R1's revised chat template (docs/ARCHITECTURE.md 7.2), with tool calls and tool outputs.

    Returns `<｜begin▁of▁sentence｜><｜User｜>...<｜Assistant｜>answer<｜end▁of▁sentence｜>...<｜Assistant｜><think>\\n`.
    messages: system, user, assistant or tool dicts; an assistant dict may carry "tool_calls" (OpenAI's shape).
    The generation prompt ends with `<think>\\n` (think_prefill; nothing without it), or with an empty closed
    thought when `thinking` is off (DeepThink off). `forced` is text the answer must start with (after an empty
    thought); `prefix` is an assistant reply to continue: it replaces the prefill unless it opens a thought
    itself. Tool definitions go into the system text (the template has no slot for them).
    """
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in (*ROLES, "tool") or not isinstance(m.get("content"), str):
            role = m.get("role") if isinstance(m, dict) else m
            raise R1kitError(f"message {i}: expected a system, user, assistant or tool message with string "
                             f"content, got role {role!r}")
    if not messages:
        raise R1kitError("chat has no messages")
    # Deliberate difference from the official template, which emits system text right after bos with no role tag:
    # R1 was not trained with a system role and its usage recommendations say "no system prompt; all instructions in
    # the user turn", so all system text is moved to the front of the first user turn.
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    if tools:
        system = f"{system}\n\n{tools_system_text(tools)}" if system else tools_system_text(tools)
    if system and not any(m["role"] == "user" for m in messages):
        raise R1kitError("a system message needs a user message to merge into (R1 has no system role)")
    out, in_outputs = [R1_BOS], False
    for m in messages:
        role = m["role"]
        if role == "tool":  # after tool outputs the model writes on directly, with no <｜Assistant｜> tag
            opening = f"\n{OUTPUT_BEGIN}" if in_outputs else OUTPUTS_BEGIN + OUTPUT_BEGIN
            out.append(opening + m["content"] + OUTPUT_END)
            in_outputs = True
            continue
        if role == "user":
            content = f"{system}\n\n{m['content']}" if system else m["content"]
            system = ""
            out.append((OUTPUTS_END if in_outputs else "") + R1_USER + content)
        elif role == "assistant":
            # History keeps only the answer: the official `content.split('</think>')[-1]`, which drops earlier
            # reasoning and the tag but keeps the "\n\n" after it.
            text = m["content"].split(THINK_CLOSE)[-1]
            calls = m.get("tool_calls") or []
            if calls:
                text += CALLS_BEGIN + "".join(format_call(c["function"]["name"], c["function"]["arguments"], k == 0)
                                              for k, c in enumerate(calls)) + CALLS_END
            out.append((OUTPUTS_END if in_outputs else R1_ASSISTANT) + text + R1_EOS)
        in_outputs = False
    if not add_generation_prompt:
        return "".join(out) + (OUTPUTS_END if in_outputs else "")
    out.append(OUTPUTS_END if in_outputs else R1_ASSISTANT)
    if prefix is not None:
        out.append(prefix if THINK_OPEN in prefix else CLOSED_THOUGHT + prefix)
    elif forced:
        out.append(CLOSED_THOUGHT + forced)
    else:
        # The revised template forces the reply to start inside the thought (the model may otherwise skip thinking).
        out.append(CLOSED_THOUGHT if not thinking else THINK_OPEN + "\n" if think_prefill else "")
    return "".join(out)


def render_r1_zero(question: str) -> str:
    """The R1-Zero RL prompt (docs/RECIPE.md section 2): plain text, no special tokens, ending "Assistant:"."""
    if not isinstance(question, str):
        raise R1kitError(f"question must be a string, got {type(question).__name__}")
    return f"{R1_ZERO_PREFIX} User: {question}. Assistant:"


# The same templates as HF jinja, written to tokenizer_config.json so transformers renders what r1kit trained on.
R1_JINJA = (
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.system = ns.system + ('\n\n' if ns.system else '') + m['content'] %}{% endif %}{% endfor %}"
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '<｜User｜>' }}{% if ns.system %}{{ ns.system + '\n\n' }}"
    "{% set ns.system = '' %}{% endif %}{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + m['content'].split('</think>')[-1] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\n' }}{% endif %}"
)


def r1_zero_jinja() -> str:
    """The R1-Zero prompt around the last user message, as jinja (the text outside the question is verbatim)."""
    before, after = render_r1_zero("\0").split("\0")
    q = "{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.q = m['content'] %}{% endif %}{% endfor %}"
    return ("{% set ns = namespace(q='') %}" + q + "{{ bos_token }}{% raw %}" + before + "{% endraw %}{{ ns.q }}"
            "{% raw %}" + after + "{% endraw %}")


def _raise_exception(message: str) -> None:
    # Templates call this to reject a conversation (e.g. "roles must alternate"): that is the user's input at fault.
    raise R1kitError(f"chat template: {message}")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Same as transformers: jinja's own tojson HTML-escapes, which would change the rendered prompt.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    # Mirrors transformers' apply_chat_template environment; the sandbox matters because Hub templates are untrusted.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise R1kitError(f"chat template: syntax error on line {e.lineno}: {e.message}") from e


def render_jinja(
    template: str,
    messages: Sequence[Message],
    bos_token: str | None,
    eos_token: str | None,
    add_generation_prompt: bool = True,
) -> str:
    """Render a model's own jinja `chat_template` the way transformers' `apply_chat_template(tokenize=False)` does."""
    if not messages:
        raise R1kitError("chat has no messages")
    return _compile(template).render(
        messages=list(messages),
        tools=None,
        documents=None,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer


def _token_text(token: str | dict | None) -> str | None:
    # tokenizer_config.json stores special tokens either as plain strings or as AddedToken dicts.
    return token.get("content") if isinstance(token, dict) else token


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise file_error(path, f"cannot read JSON ({e})") from e
    if not isinstance(data, dict):
        raise file_error(path, "expected a JSON object")
    return data


class Tokenizer:
    """Text <-> ids, plus chat rendering. `encode` never adds special tokens unless asked (`add_bos`)."""

    def __init__(
        self,
        tk: tokenizers.Tokenizer,
        bos_token: str | None = None,
        eos_token: str | None = None,
        chat_template: str | None = None,
        add_bos: bool = False,
        template: str | None = None,
    ):
        self.tk = tk
        self.bos_token, self.eos_token = bos_token, eos_token
        self.chat_template = chat_template
        # Which prompt format the model was trained for: "r1", "r1-zero" or "model" (its own jinja). It travels
        # with the checkpoint (tokenizer_config.json), so every command reads it instead of guessing.
        if template is None:
            template = "model" if chat_template is not None and R1_USER not in chat_template else "r1"
        if template not in TEMPLATES:
            raise R1kitError(f"unknown chat template {template!r}; expected one of {', '.join(TEMPLATES)}")
        self.template = template
        self.add_bos = add_bos  # the model expects bos at the start of every sequence (R1: true)
        self.bos_id = self._special_id(bos_token)
        self.eos_id = self._special_id(eos_token)

    def _special_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        if (i := self.tk.token_to_id(token)) is None:
            raise R1kitError(f"special token {token!r} is not in the tokenizer vocabulary")
        return i

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load tokenizer.json (the file, or a checkpoint folder holding it) and the tokenizer_config.json beside it."""
        path = Path(path)
        tok_file = path / "tokenizer.json" if path.is_dir() else path
        if not tok_file.is_file():
            raise file_error(tok_file, "tokenizer file not found")
        try:
            tk = tokenizers.Tokenizer.from_file(str(tok_file))
        except Exception as e:  # the Rust side raises a bare Exception for any parse error
            raise file_error(tok_file, f"not a valid tokenizer.json ({e})") from e
        cfg_file = tok_file.parent / "tokenizer_config.json"
        cfg = _read_json(cfg_file) if cfg_file.is_file() else {}
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        jinja_file = tok_file.parent / "chat_template.jinja"  # where newer transformers versions save it
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        tok = cls(tk, _token_text(cfg.get("bos_token")), _token_text(cfg.get("eos_token")), template,
                  template=cfg.get("r1kit_template"))
        add_bos = cfg.get("add_bos_token")
        if add_bos is None:  # no config flag: the tokenizer.json post-processor decides, as in transformers
            add_bos = tok.bos_id is not None and tk.encode("", add_special_tokens=True).ids[:1] == [tok.bos_id]
        tok.add_bos = bool(add_bos)
        return tok

    @classmethod
    def builtin(cls) -> Tokenizer:
        """A character-level tokenizer (106 ids, the same every run) that needs no download.

        Ids 0-9 are the R1 tokens, tags, pad and unk (bos=0 and eos=1 as in R1), then printable ASCII and "\\n".
        """
        special = [R1_BOS, R1_EOS, R1_USER, R1_ASSISTANT]
        tags = [THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE]
        pad_unk = ["<pad>", "<unk>"]
        chars = [chr(c) for c in range(32, 127)] + ["\n"]
        vocab = {t: i for i, t in enumerate(special + tags + pad_unk + chars)}
        # BPE without merges and without a pre-tokenizer: every character is its own token, spaces included.
        tk = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        tk.decoder = decoders.Fuse()  # join tokens with no separator
        # Added tokens match as whole strings even inside plain text, so "<think>" is one id. Tags are not "special":
        # decode(skip_special_tokens=True) must keep them for reasoning/answer parsing.
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special + pad_unk])
        tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in tags])
        # As in R1's tokenizer.json, HF `tok(text)` prepends bos: a saved copy acts like add_bos=True in transformers.
        tk.post_processor = processors.TemplateProcessing(
            single=f"{R1_BOS} $A", pair=f"{R1_BOS} $A {R1_BOS} $B", special_tokens=[(R1_BOS, 0)]
        )
        return cls(tk, R1_BOS, R1_EOS, chat_template=None, add_bos=True)

    @classmethod
    def train_bpe(cls, texts: Sequence[str], vocab_size: int = 384) -> Tokenizer:
        """A small byte-level BPE trained on `texts`, with the R1 tokens (bos=0, eos=1) and the think/answer tags.

        Digits stay single tokens, so numbers keep a place-value structure a tiny model can learn; words merge,
        so a long fixed prompt (the R1-Zero template) costs a few dozen tokens instead of hundreds of characters.
        Deterministic for the same texts. The tags are added after training as plain (not special) tokens, so
        they get ids of their own and `decode(skip_special_tokens=True)` keeps them for parsing.
        """
        special = [R1_BOS, R1_EOS, R1_USER, R1_ASSISTANT, "<pad>", "<unk>"]
        tags = [THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE]
        tk = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(tags), special_tokens=special,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        plain = list(texts)
        for tag in tags:  # no merges are learnt from inside the tags: they become single tokens below
            plain = [t.replace(tag, " ") for t in plain]
        tk.train_from_iterator(plain, trainer)
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
        tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in tags])
        tk.post_processor = processors.TemplateProcessing(
            single=f"{R1_BOS} $A", pair=f"{R1_BOS} $A {R1_BOS} $B", special_tokens=[(R1_BOS, 0)]
        )
        return cls(tk, R1_BOS, R1_EOS, chat_template=None, add_bos=True)

    @property
    def vocab_size(self) -> int:
        """Ids in the tokenizer, added tokens included (the model's embedding may be padded beyond this)."""
        return self.tk.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tk.id_to_token(i)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render(self, messages: Sequence[Message], template: str | None = None,
               add_generation_prompt: bool = True) -> str:
        """Render a chat with "r1" (render_r1), "r1-zero" (last user message as the question; always ends in
        "Assistant:") or "model" (this tokenizer's own jinja chat_template); None = the checkpoint's template."""
        template = template or self.template
        if template == "r1":
            return render_r1(messages, add_generation_prompt)
        if template == "r1-zero":
            _check_messages(messages)
            questions = [m["content"] for m in messages if m["role"] == "user"]
            if not questions:
                raise R1kitError("the r1-zero template needs a user message")
            return render_r1_zero(questions[-1])
        if template == "model":
            if self.chat_template is None:
                raise R1kitError("this tokenizer has no chat_template; use template 'r1' or 'r1-zero'")
            return render_jinja(self.chat_template, messages, self.bos_token, self.eos_token, add_generation_prompt)
        raise R1kitError(f"unknown chat template {template!r}; expected one of {', '.join(TEMPLATES)}")

    def encode_chat(self, messages: Sequence[Message], template: str | None = None) -> list[int]:
        """Render and encode a chat prompt with exactly one leading bos (when the model uses bos)."""
        ids = self.encode(self.render(messages, template))
        # The r1 and model templates write bos as text, which encodes to bos_id because bos is an added token; adding
        # another would give the double bos of docs/ARCHITECTURE.md 7.2. r1-zero has no bos text, so add it here.
        if self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids.insert(0, self.bos_id)
        return ids

    def save(self, folder: str | Path) -> None:
        """Write tokenizer.json + tokenizer_config.json, loadable by `transformers.AutoTokenizer.from_pretrained`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tk.save(str(folder / "tokenizer.json"))
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "add_bos_token": self.add_bos,
            "r1kit_template": self.template,
        }
        jinja = self.chat_template  # a model's own template (R1's official one included) is kept as it is
        if self.template == "r1-zero":
            jinja = r1_zero_jinja()
        elif self.template == "r1" and (jinja is None or R1_USER not in jinja):
            jinja = R1_JINJA
        if jinja is not None:
            cfg["chat_template"] = jinja
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", "utf-8")
