"""`r1kit chat`: a terminal chat with the model, streaming, the thought shown dimmed and folded when it ends.

    r1kit chat ckpt/                 # /think on|off, /show (the last thought in full), /clear, /exit

It drives an Engine in-process (no server) and shares the server's prompt rendering (`render_prompt`) and
token-to-text path (`ChoiceStream`: incremental detokenization + the reasoning split), so what it shows is what the
API would return. As DeepSeek recommends for multi-turn chats, earlier thoughts are not sent back: history keeps only
the answers.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from r1kit.engine.engine import Engine
from r1kit.engine.sampling import SamplingParams
from r1kit.errors import R1kitError
from r1kit.serve.reasoning import ChoiceStream, ReasoningParser, initial_reasoning_state, render_prompt
from r1kit.tokenizer import Tokenizer

THOUGHT_LINES = 8  # lines of the thought shown while it streams (the whole of it with /show)
REFRESH_S = 1 / 15  # screen refreshes at most this often
HELP = "/think on|off  DeepThink switch   /show  the last thought   /clear  new conversation   /exit  quit"


class ChatSession:
    """One conversation over an engine. `run(lines)` is the REPL; `ask(text)` answers one user message.

    Args:
        engine: an Engine (max_batch 1 is enough).
        tokenizer: its tokenizer.
        console: where to draw (a rich Console).
        params: sampling parameters of every reply.
        template: "r1" (with the DeepThink switch), "r1-zero" or "model".
        think: DeepThink at the start.
    """

    def __init__(self, engine: Engine, tokenizer: Tokenizer, console: Console, params: SamplingParams,
                 template: str = "r1", think: bool = True):
        self.engine, self.tok, self.console, self.params = engine, tokenizer, console, params
        self.template, self.think = template, think
        self.history: list[dict] = []
        self.last_thought: str | None = None

    def run(self, lines: Iterable[str] | Callable[[], str]) -> None:
        """Read lines (an iterable, or a function like input() that raises EOFError at the end) until /exit."""
        self.console.print(f"[bold]r1kit chat[/]  [dim]{HELP}[/]")
        it = iter(lines) if not callable(lines) else iter(lambda: lines(), object())
        while True:
            try:
                line = next(it).strip()
            except (StopIteration, EOFError, KeyboardInterrupt):
                break
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    break
                continue
            self.ask(line)

    def command(self, line: str) -> bool:
        """Handle a /command; False means quit."""
        cmd, _, arg = line.partition(" ")
        arg = arg.strip().lower()
        if cmd in ("/exit", "/quit", "/bye"):
            return False
        if cmd == "/think":
            if arg in ("on", "off"):
                self.think = arg == "on"
            elif arg:
                self.console.print("[red]usage: /think on|off[/]")
                return True
            self.console.print(f"[dim]DeepThink is {'on' if self.think else 'off'}[/]")
        elif cmd == "/show":
            if self.last_thought:
                self.console.print(Panel(Text(self.last_thought, style="dim"), title="thought", border_style="dim"))
            else:
                self.console.print("[dim]no thought yet[/]")
        elif cmd == "/clear":
            self.history.clear()
            self.last_thought = None
            self.console.print("[dim]conversation cleared[/]")
        else:
            self.console.print(f"[red]unknown command {cmd}[/]  [dim]{HELP}[/]")
        return True

    def ask(self, text: str) -> str:
        """Generate and show the reply to one user message; returns the answer (the part after the thought)."""
        messages = [*self.history, {"role": "user", "content": text}]
        try:
            ids, prompt = render_prompt(self.tok, messages, self.template, self.think)
            if len(ids) >= self.engine.max_seq:
                raise R1kitError(f"the conversation ({len(ids)} tokens) no longer fits the context of "
                                 f"{self.engine.max_seq}; /clear to start over")
            room = self.engine.max_seq - len(ids)
            params = SamplingParams(**{**vars(self.params), "max_new_tokens": min(self.params.max_new_tokens, room)})
            rid = self.engine.add_request(ids, params)
        except R1kitError as e:
            self.console.print(f"[red]{e}[/]")
            return ""
        stream = ChoiceStream(self.tok, list(params.stop),
                              ReasoningParser(initial_reasoning_state(prompt, forced=self.template == "r1")))
        thought, answer = [], []
        t0, t_end, last_draw = time.perf_counter(), None, 0.0

        def view():
            parts = []
            r = "".join(thought)
            if r.strip():
                if t_end is None:  # still thinking: the tail of the thought, dimmed
                    tail = "\n".join(r.strip("\n").splitlines()[-THOUGHT_LINES:])
                    parts.append(Text(f"▾ Thinking…\n{tail}", style="dim italic"))
                else:  # folded to one line
                    n = stream.reasoning_tokens
                    parts.append(Text(f"▸ Thought for {t_end - t0:.1f}s ({n} tokens) · /show to expand",
                                      style="dim"))
            parts.append(Text("".join(answer).lstrip("\n")))
            return Group(*parts)

        with Live(view(), console=self.console, auto_refresh=False, vertical_overflow="visible") as live:
            try:
                done = False
                while not done:
                    for ev in self.engine.step():
                        if ev.request_id != rid:
                            continue
                        r, c = stream.add(ev.token)
                        if ev.finished:
                            r2, c2 = stream.finish(self.engine.pop_result(rid))
                            r, c, done = r + r2, c + c2, True
                        thought.append(r)
                        answer.append(c)
                        if t_end is None and (c or not stream.parser.in_reasoning or done):
                            t_end = time.perf_counter()
                    now = time.perf_counter()
                    if done or now - last_draw > REFRESH_S:
                        live.update(view(), refresh=True)
                        last_draw = now
            except KeyboardInterrupt:  # stop this reply, keep what came
                if self.engine.abort(rid):
                    self.engine.pop_result(rid)
                t_end = t_end or time.perf_counter()
                answer.append(" [stopped]")
                live.update(view(), refresh=True)
        reply = "".join(answer).strip("\n")
        self.last_thought = "".join(thought).strip("\n") or None
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        return reply


def chat(model: str, temperature: float = 0.6, top_p: float = 0.95, max_new_tokens: int = 4096, think: bool = True,
         template: str = "", seed: int | None = None, device: str | None = None) -> None:
    """Chat with a model in the terminal: streaming, the thought dimmed and folded, /think on|off, /show, /clear.

    Args:
        model: an HF checkpoint folder, a .gguf file or a preset name (a preset has RANDOM weights).
        temperature: 0 = greedy; DeepSeek recommends 0.6 for R1.
        top_p: nucleus sampling threshold in (0, 1]; 1 = off.
        max_new_tokens: the most tokens per reply (thought included).
        think: DeepThink at the start (the R1 <think> prefill); /think on|off switches it.
        template: empty = the checkpoint's own (saved with it); r1 (DeepSeek-R1 chat template), r1-zero (the
            R1-Zero prompt) or model (the tokenizer's own chat template).
        seed: makes replies reproducible; unset = random.
        device: cpu or cuda; default cuda when available (bf16), else cpu (fp32).
    """
    from r1kit.engine.load import load_for_command

    if template and template not in ("r1", "r1-zero", "model"):
        raise R1kitError(f"unknown template {template!r}; expected r1, r1-zero or model")
    console = Console(highlight=False)
    net, tok = load_for_command(model, device=device, announce=lambda line: console.print(line, style="yellow", markup=False))
    template = template or tok.template  # the template the checkpoint was trained for
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    session = ChatSession(Engine(net, tok, max_batch=1), tok, console, params, template, think)
    session.run(lambda: console.input("[bold cyan]you ›[/] "))
