"""The bilingual arithmetic task whose worked solutions mix languages (the R1 pipeline's), the built-in
non-reasoning chat set, an adapter that renders any task's prompts with the R1 chat template, and `prompt_ids`,
the one way a task's prompt becomes token ids under a template.

    task = MixedArithTask(split="train")              # Chinese questions; scratchpads mix English connectives
    task.worked_solution(task[0])                     # "<think>先算 4+3=7, then 7+1=8。</think> <answer>8</answer>"
    chat = ChatTask(task)                             # what GRPO and sampling see for R1-template models
"""
from __future__ import annotations

from r1kit.errors import R1kitError
from r1kit.tasks.common import Example, Task, example_rng
from r1kit.tasks.synthetic import _ARITH_WORDS, ArithTask
from r1kit.tokenizer import R1_BOS, render_r1


class MixedArithTask(ArithTask):
    """`arith` with questions in `lang` whose worked scratchpads mix in the other language.

    Each connective of the scratchpad ("先算 ... ，再算 ...") is written in the other language with probability
    `mix` (seeded by the question), so a pretraining corpus built from `worked_solution` teaches the base to mix
    languages in its chain of thought, the failure R1's language-consistency reward fixes. `meta["scratchpad_clean"]`
    keeps the single-language version.
    """

    name = "arith-mix"

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0, n_terms=(3, 4),
                 max_operand: int = 9, ops: str = "+", lang: str = "zh", mix: float = 0.3, **slice_kw):
        if lang not in ("en", "zh"):
            raise R1kitError(f"arith-mix: lang must be 'en' or 'zh', got {lang!r}")
        super().__init__(split, size, seed, n_terms, max_operand, ops, lang=lang, **slice_kw)
        self.mix = mix

    def generate(self, rng) -> Example:
        ex = super().generate(rng)
        other = "en" if self.lang == "zh" else "zh"
        pick = example_rng("mix", ex.question)  # its own stream, so `mix` does not change the questions
        words = [_ARITH_WORDS[other if pick.random() < self.mix else self.lang] for _ in ex.meta["steps"]]
        steps = ex.meta["steps"]
        mixed = words[0][1].format(steps[0]) + "".join(w[2].format(s) for w, s in zip(words[1:], steps[1:]))
        ex.meta.update(scratchpad_clean=ex.meta["scratchpad"], scratchpad=mixed + _ARITH_WORDS[self.lang][3])
        return ex


# --------------------------------------------------------------------------------------------------------------
# Non-reasoning data: trivial chats answered without thinking (R1 stage 3's "none for trivial queries such as
# hello"); mixed into SFT data and used as the general prompts of the all-scenario RL stage.

CHAT_DATA = [
    ("hello", "Hello! How can I help you today?", "en"),
    ("hi", "Hi! What can I do for you?", "en"),
    ("good morning", "Good morning! How can I help?", "en"),
    ("who are you", "I am a small assistant trained with r1kit.", "en"),
    ("what is your name", "My name is r1kit tiny.", "en"),
    ("thank you", "You are welcome!", "en"),
    ("thanks a lot", "Glad I could help!", "en"),
    ("how are you", "I am fine, thank you. How can I help you?", "en"),
    ("bye", "Goodbye! Have a nice day.", "en"),
    ("can you help me", "Of course. What do you need?", "en"),
    ("say yes", "Yes.", "en"),
    ("say no", "No.", "en"),
    ("你好", "你好！有什么可以帮你的吗？", "zh"),
    ("谢谢", "不客气！", "zh"),
    ("你是谁", "我是一个用 r1kit 训练的小助手。", "zh"),
    ("再见", "再见！祝你愉快。", "zh"),
    ("早上好", "早上好！需要我帮什么忙？", "zh"),
    ("你叫什么名字", "我叫 r1kit tiny。", "zh"),
]


def chat_examples(path: str = "") -> list[Example]:
    """Non-reasoning chats as Examples (question = the user turn, answer = the reference reply, meta kind
    "general"): the built-in CHAT_DATA, or a jsonl of {"messages": [...]} whose last turn is the assistant's."""
    if not path:
        rows = [([{"role": "user", "content": q}], a, lang) for q, a, lang in CHAT_DATA]
    else:
        from r1kit.pipeline.data import read_chat_jsonl
        rows = []
        for msgs in read_chat_jsonl(path):
            if msgs[-1]["role"] != "assistant":
                raise R1kitError(f"{path}: every chat must end with an assistant turn")
            rows.append((msgs[:-1], msgs[-1]["content"], None))
    out = []
    for msgs, reply, lang in rows:
        question = next(m["content"] for m in reversed(msgs) if m["role"] == "user")
        lang = lang or ("zh" if any("\u4e00" <= c <= "\u9fff" for c in question) else "en")
        out.append(Example(question, reply, {"kind": "general", "lang": lang, "messages": msgs, "task": "chat"}))
    return out


class ChatTask:
    """Any task (plus optional general chats) seen through the R1 chat template.

    `prompt()` returns the rendered R1 prompt without its leading bos text, because GRPO encodes prompts with
    `tok.encode(prompt, add_bos=True)`: the ids equal `tok.encode_chat(messages)`. Completions continue after the
    template's `<think>\\n` prefill, so `evaluate` scores with template "r1" (an answer needs a closing </think>).
    """

    def __init__(self, task: Task, general: list[Example] | None = None):
        self.task, self.general = task, list(general or [])
        self.name = f"chat({task.name})"

    def __len__(self) -> int:
        return len(self.task)

    def __getitem__(self, i):
        return self.task[i]

    @staticmethod
    def messages(example: Example) -> list[dict]:
        return example.meta.get("messages") or [{"role": "user", "content": example.question}]

    def prompt(self, example: Example, template: str = "r1") -> str:
        text = render_r1(self.messages(example))
        return text[len(R1_BOS):] if text.startswith(R1_BOS) else text

    def evaluate(self, example: Example, completion: str, template: str = "r1") -> float:
        if example.meta.get("kind") == "general":
            from r1kit.rewards import answer_section
            section = answer_section(completion, require_think=True)  # no closed thought: no answer
            return float(section is not None and section.strip() == example.answer.strip())
        return self.task.evaluate(example, completion, template="r1")


def prompt_ids(tok, task, example: Example, template: str) -> list[int]:
    """Prompt token ids for `example` under `template`: "r1-zero" (the task's text prompt), "r1" (the R1 chat
    template) or "model" (the checkpoint's own chat template)."""
    if template in ("r1", "model"):
        return tok.encode_chat(ChatTask.messages(example), template=template)
    if template == "r1-zero":
        return tok.encode(task.prompt(example, template="r1-zero"), add_bos=True)
    raise R1kitError(f"unknown template {template!r}; expected r1-zero, r1 or model")
