"""`r1kit generate`: sample from a model and stream the text to the terminal."""
from __future__ import annotations

import sys
import time

from r1kit.errors import R1kitError

TEMPLATES = ("r1", "r1-zero", "model", "none")


def generate(model: str, prompt: str = "What is the sum of the first 100 positive integers?", n: int = 1,
             temperature: float = 0.6, top_p: float = 0.95, top_k: int = 0, max_new_tokens: int = 512,
             seed: int | None = None, template: str = "", device: str | None = None, compile: bool = False) -> None:
    """Generate completions of one prompt and stream them to the terminal.

    Args:
        model: an HF checkpoint folder, a .gguf file or a preset name (a preset has RANDOM weights).
        prompt: the user message (or the raw text with --template none).
        n: samples of the prompt, prefilled once and decoded together; with n > 1 each prints when it finishes.
        temperature: 0 = greedy; DeepSeek recommends 0.5-0.7 (0.6) for R1.
        top_p: nucleus sampling threshold in (0, 1]; 1 = off.
        top_k: keep the k most likely tokens; 0 = off.
        max_new_tokens: the most tokens per sample.
        seed: makes the samples reproducible (sample j uses seed + j); unset = random.
        template: empty = the checkpoint's own (saved with it); r1 (DeepSeek-R1 chat), r1-zero (the R1-Zero RL
            prompt), model (the tokenizer's own chat template) or none (the prompt as is).
        device: cpu or cuda; default cuda when available (bf16), else cpu (fp32).
        compile: compile the decode step (static shapes; CUDA graphs on GPU).
    """
    from r1kit.engine.engine import Engine
    from r1kit.engine.load import load_for_command
    from r1kit.engine.sampling import SamplingParams

    if template and template not in TEMPLATES:
        raise R1kitError(f"unknown template {template!r}; expected one of {', '.join(TEMPLATES)}")
    if not prompt:
        raise R1kitError("empty prompt")
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                            seed=seed)
    net, tok = load_for_command(model, device=device, announce=lambda line: print(line, file=sys.stderr))
    template = template or tok.template  # the template the checkpoint was trained for
    if template == "none":
        ids = tok.encode(prompt, add_bos=tok.add_bos)
    else:
        ids = tok.encode_chat([{"role": "user", "content": prompt}], template=template)
    engine = Engine(net, tok, max_batch=max(n, 1), max_seq_len=min(net.cfg.max_seq_len, len(ids) + max_new_tokens),
                    compile=compile)
    out = sys.stdout
    shown = ""  # text of sample 0 printed so far (n == 1 streams it token by token)

    def on_token(ev):
        nonlocal shown
        if n == 1:
            text = tok.decode(engine.tokens(ev.request_id), skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                out.write(text[len(shown):])
                out.flush()
                shown = text

    t0 = time.perf_counter()
    results = engine.generate([ids], params, n=n, on_token=on_token)
    dt = time.perf_counter() - t0
    for j, r in enumerate(results):
        text = tok.decode(r.token_ids, skip_special_tokens=True)
        if n == 1:
            out.write(text[len(shown):] + "\n")
        else:
            out.write(f"\n--- sample {j} ---\n{text}\n")
    total = sum(len(r.token_ids) for r in results)
    reasons = ", ".join(sorted({r.finish_reason for r in results}))
    print(f"[{total} tokens in {dt:.1f}s ({total / dt:.1f} tok/s), prompt {len(ids)} tokens, "
          f"finish: {reasons}, {net.cfg.arch} on {engine.device} {str(engine.dtype).removeprefix('torch.')}]",
          file=sys.stderr)
