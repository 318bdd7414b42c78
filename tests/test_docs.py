"""Every `r1kit ...` command shown in README.md and docs/*.md parses with the real CLI parser, so the docs cannot drift
from the CLI; and no doc or source file points outside the repository."""
import re
import shlex
from pathlib import Path

import pytest

from r1kit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "data" / "README.md"]
# `r1kit CMD ...`, also as `.venv/bin/r1kit` or after a `$ ` prompt
COMMAND = re.compile(r"^(?:\$\s+)?(?:[\w./-]*/)?r1kit\s+(.*)$")


def documented_commands(path: Path) -> list[tuple[str, str]]:
    """[(where, argument string after `r1kit`)] from the fenced code blocks and inline code spans of a Markdown file."""
    out, fenced, pending, prose = [], False, "", []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.relative_to(ROOT)}:{n}"
        if line.lstrip().startswith("```"):
            fenced = not fenced
            prose.append("")
            continue
        prose.append("" if fenced else line)
        if not fenced:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):  # a command continued on the next line
            pending = line[:-1] + " "
            continue
        pending = ""
        m = COMMAND.match(line)
        if m:
            out.append((where, m[1]))
    text = "\n".join(prose)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):  # inline spans may wrap onto the next line
        c = COMMAND.match(" ".join(m[1].split()))
        if c:
            out.append((f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}", c[1]))
    return out


def argv_of(args: str) -> list[str]:
    """Shell words of one command line, without its trailing comment or what follows a pipe or `&&`."""
    words = shlex.split(args, comments=True)
    for i, w in enumerate(words):
        if w in ("|", "&&", ";", ">", "2>&1"):
            return words[:i]
    return words


COMMANDS = [c for doc in DOCS for c in documented_commands(doc)]


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 30, COMMANDS  # the extractor finds the README's and the docs' command lines
    assert {argv_of(a)[0] for _, a in COMMANDS} >= {"zero", "generate", "eval", "serve", "chat", "params", "convert",
                                                    "sample", "pipeline", "demo"}


@pytest.mark.parametrize("where,args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(where, args, capsys):
    argv = argv_of(args)
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert argv[0] in commands, f"{where}: unknown command r1kit {argv[0]}"
    if len(argv) == 1:  # `r1kit eval` as the name of a command in prose
        return
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        assert e.code == 0, f"{where}: `r1kit {args}` does not parse: {capsys.readouterr().err.strip()}"


def test_an_undocumented_flag_is_caught():
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv_of("sample --model runs/x/model --out data/sft.jsonl"))
OUTSIDE = re.compile(r"\.\./shared|shared/(docs|benchmarks)|\"shared\" / \"(docs|benchmarks)\"|"
                     r"\b(architecture|style|r1-recipe|evaluation)\.md\b")


def outside_pointers() -> dict[str, list[str]]:
    """{file: ["line: text"]} for every line of the repository's code and docs that points outside it."""
    files = [p for d in ("src", "tests", "bench", "recipes", "docs") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".md", ".yaml", ".c", ".html", ".toml") and p.is_file()]
    files += [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml", ROOT / "data" / "README.md"]
    hits = {}
    for p in files:
        if p.resolve() == Path(__file__).resolve():
            continue
        lines = [f"{n}: {line.strip()}" for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if OUTSIDE.search(line)]
        if lines:
            hits[str(p.relative_to(ROOT))] = lines
    return hits


def test_nothing_points_outside_the_repository():
    """The facts the code relies on are in docs/ of this repository; no comment or doc names the files they came
    from outside it."""
    hits = outside_pointers()
    assert not hits, "\n".join(f"{f}:{line}" for f, lines in hits.items() for line in lines)
