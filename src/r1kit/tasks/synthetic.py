"""Generated tasks for offline demos: short strings a tiny character-level model can learn, where a scratchpad inside
<think> makes the answer reliable. Examples are generated per index from a seeded RNG (random access, no storage);
train and test are disjoint by a hash of the question.

    arith       "3+5*2-4"               gold "9"        scratchpad "5*2=10 3+10=13 13-4=9"
    countdown   "Use 3, 8, 4 to make 20"  gold "(8*3)-4"  scratchpad "8*3=24 24-4=20"

`worked_solution(example)` is a correct completion in the R1-Zero format and `bare_solution(example)` the same
answer (or a plausible guess) with an empty thought: together they make a pretraining corpus for a tiny base model.
Both are well formed (format reward 1: an empty `<think></think>` is a valid thought), so only accuracy separates them.

Answers are checked by the rule in `meta["verifier"]` (r1kit.rewards.grade): arith needs a literal number, so
restating the question ("9+8+9" for 26) scores 0; countdown needs an expression over exactly the given numbers, so the
bare target scores 0.
"""

from __future__ import annotations

from fractions import Fraction

from r1kit.errors import R1kitError
from r1kit.tasks.common import Example, Task, example_rng, in_test_split

SPLITS = ("train", "test")
TEST_PERCENT = 10  # share of the question space reserved for the test split
MAX_TRIES = 10_000


def _range_arg(x, name: str) -> tuple[int, int]:
    lo, hi = (x, x) if isinstance(x, int) else tuple(x)
    if not 1 <= lo <= hi:
        raise R1kitError(f"{name} must be a positive int or a (low, high) pair with low <= high, got {x!r}")
    return lo, hi


def _completion(think: str, answer: str, template: str, lang: str | None) -> str:
    if template == "r1-zero":
        return f"<think>{think}</think> <answer>{answer}</answer>"
    if template == "r1":  # the prompt already opened <think>\n
        lead = "答案是" if lang == "zh" else "The answer is"
        return f"{think}\n</think>\n\n{lead} $\\boxed{{{answer}}}$."
    raise R1kitError(f"unknown template {template!r}; expected r1-zero or r1")


class SyntheticTask(Task):
    """Shared plumbing: split/size/seed, rejection into the right split, solutions."""

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0, lang: str | None = None,
                 start: int = 0, stop: int | None = None, step: int = 1):
        super().__init__(start, stop, step)
        if split not in SPLITS:
            raise R1kitError(f"{self.name}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if lang not in (None, "en", "zh"):
            raise R1kitError(f"{self.name}: unknown lang {lang!r}; expected None, 'en' or 'zh'")
        self.split, self.seed, self.lang = split, seed, lang
        self.size = size if size is not None else (10_000 if split == "train" else 500)

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> Example:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = example_rng(self.name, self.seed, self.split, index)
        for _ in range(MAX_TRIES):
            ex = self.generate(rng)
            if ex is not None and in_test_split(ex.question, TEST_PERCENT) == (self.split == "test"):
                ex.meta.update(lang=self.lang or "en", index=index, split=self.split)
                return ex
        raise R1kitError(f"{self.name}: could not generate a {self.split} example; widen the difficulty settings")

    def generate(self, rng) -> Example | None:
        """One random example (None: rejected, try again)."""
        raise NotImplementedError

    def worked_solution(self, example: Example, template: str = "r1-zero") -> str:
        """A correct completion: scratchpad in the thought, the gold in the answer."""
        return _completion(example.meta["scratchpad"], example.answer, template, self.lang)

    def bare_solution(self, example: Example, guess: bool = False, template: str = "r1-zero") -> str:
        """An empty thought (a well-formed `<think></think>`) and the gold answer, or (guess=True) a plausible answer
        that is usually wrong."""
        answer = self.guess(example) if guess else example.answer
        return _completion("", answer, template, self.lang)

    def shown_solution(self, example: Example) -> str:
        """An empty thought and the working itself as the answer, for a question that asks to see it (not a literal
        value, so it scores 0 where an answer is graded)."""
        return _completion("", example.meta["scratchpad"], "r1-zero", self.lang)

    def guess(self, example: Example) -> str:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------------


def arith_steps(numbers: list[int], ops: list[str], slip: tuple[int, int] | None = None,
                nested: bool = False) -> tuple[list[str], int]:
    """Evaluate with the usual precedence, one operation per step: all `*` left to right, then `+ -` left to right
    (nested=True: strictly left to right, as the parenthesised "((3+5)*2)-4" reads).
    slip=(k, delta): step k's result is written off by delta and carried on (a slip in a worked solution).

    >>> arith_steps([3, 5, 2, 4], ["+", "*", "-"])
    (['5*2=10', '3+10=13', '13-4=9'], 9)
    >>> arith_steps([3, 5, 2, 4], ["+", "*", "-"], slip=(1, 2))
    (['5*2=10', '3+10=15', '15-4=11'], 11)
    """
    nums, ops = list(numbers), list(ops)
    steps = []

    def write(a, op, b, c):
        if slip is not None and len(steps) == slip[0]:
            c += slip[1]
        steps.append(f"{a}{op}{b}={c}")
        return c

    while "*" in ops and not nested:
        k = ops.index("*")
        nums[k : k + 2] = [write(nums[k], "*", nums[k + 1], nums[k] * nums[k + 1])]
        del ops[k]
    while ops:
        a, b, op = nums[0], nums[1], ops.pop(0)
        nums[0:2] = [write(a, op, b, a * b if op == "*" else a + b if op == "+" else a - b)]
    return steps, nums[0]


_ARITH_WORDS = {
    "en": ("Compute {}", "First {}", ", then {}", "."),
    "zh": ("计算 {}", "先算 {}", "，再算 {}", "。"),
}


class ArithTask(SyntheticTask):
    """Multi-step integer arithmetic with + - * and the usual precedence; the gold is the integer value, and an
    answer must be that value written as a number ("literal" rule: "3+5*2-4" for 9 scores 0).

    Args:
        n_terms: operand count, an int or a (low, high) range (>= 2).
        max_operand: operands are drawn from 1..max_operand.
        ops: operators to draw from (subset of "+-*").
        nested: questions are parenthesised left to right ("((3+5)*2)-4"), so the scratchpad folds one operation at a
            time onto the running value; with `*` its value is a polynomial of the operands, which a small model
            cannot evaluate in one pass as it can a plain sum.
        max_value: if set, questions whose steps reach a value beyond +-max_value are not drawn (keeps products
            of long chains small enough for a tiny model's scratchpad).
        lang: None (symbolic question and scratchpad, no words: best for a tiny model), "en" or "zh" (question and
            scratchpad in words, for the language-consistency stage; needs a tokenizer that covers the script).
    """

    name = "arith"
    verifier = "literal"  # math equivalence would accept the restated question ("9+8+9" for 26)

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0, n_terms=(2, 4),
                 max_operand: int = 9, ops: str = "+-*", lang: str | None = None, max_value: int | None = None,
                 nested: bool = False, **slice_kw):
        super().__init__(split, size, seed, lang, **slice_kw)
        self.n_terms = _range_arg(n_terms, "n_terms")
        if max_value is not None and max_value < max_operand:
            raise R1kitError(f"arith: max_value must be at least max_operand ({max_operand}), got {max_value}")
        self.max_value, self.nested = max_value, nested
        if self.n_terms[0] < 2:
            raise R1kitError(f"arith: n_terms must be >= 2, got {n_terms!r}")
        if max_operand < 1:
            raise R1kitError(f"arith: max_operand must be >= 1, got {max_operand}")
        if not ops or set(ops) - set("+-*"):
            raise R1kitError(f"arith: ops must be a non-empty subset of '+-*', got {ops!r}")
        self.max_operand, self.ops = max_operand, ops

    def generate(self, rng) -> Example:
        n = rng.randint(*self.n_terms)
        numbers = [rng.randint(1, self.max_operand) for _ in range(n)]
        ops = [rng.choice(self.ops) for _ in range(n - 1)]
        expr = str(numbers[0]) + "".join(f"{op}{x}" for op, x in zip(ops, numbers[1:]))
        if self.nested:  # "((3+5)*2)-4"
            expr = "(" * (n - 2) + str(numbers[0]) + "".join(
                f"{op}{x}" + (")" if i < n - 2 else "") for i, (op, x) in enumerate(zip(ops, numbers[1:])))
        steps, value = arith_steps(numbers, ops, nested=self.nested)
        if self.max_value is not None and any(abs(int(st.split("=")[1])) > self.max_value for st in steps):
            return None
        if self.lang is None:
            question, scratchpad = expr, " ".join(steps)
        else:
            ask, first, then, end = _ARITH_WORDS[self.lang]
            question = ask.format(expr)
            scratchpad = first.format(steps[0]) + "".join(then.format(s) for s in steps[1:]) + end
        return Example(question, str(value), {"expr": expr, "numbers": numbers, "ops": ops, "steps": steps,
                                              "scratchpad": scratchpad})

    def revised_solution(self, example: Example, revision: str, rng, template: str = "r1-zero") -> str:
        """An imperfect solution, as a corpus of human solutions has. The first three state a value worked out in the
        head, as a bare answer does, but inside the thought, then check it:

            fix      a wrong value (off by 1-3), then "wait, " and the scratchpad, whose result is the answer:
                     "<think>40 wait, 3+2=5 5*4=20 20+1=21 21*2=42</think> <answer>42</answer>"
            confirm  the right value, then "wait, " and the scratchpad: the gold answer
            placebo  the wrong value, then "wait, " and the same value again, which is the answer:
                     "<think>40 wait, 40</think> <answer>40</answer>"; `placebo-confirm` the same for the right
                     value. A placebo corpus checks this way only, so there a check never works anything out and
                     never fixes anything (the control for "reflection rises because it pays")
            slip     the scratchpad with one step off by 1-3, carried on: a wrong answer
        """
        if self.lang is not None:
            raise R1kitError("arith: revised solutions are written for symbolic scratchpads (lang None)")
        nums, ops, gold = example.meta["numbers"], example.meta["ops"], int(example.answer)
        right = example.meta["scratchpad"]
        delta = rng.choice((-1, 1)) * rng.randint(1, 3)
        wrong = gold + delta if gold + delta >= 0 else gold - delta
        if revision == "slip":
            steps, answer = arith_steps(nums, ops, slip=(rng.randrange(len(example.meta["steps"])), delta),
                                        nested=self.nested)
            think = " ".join(steps)
        elif revision in ("fix", "confirm"):
            first = gold if revision == "confirm" else wrong
            think, answer = f"{first} wait, {right}", gold
        elif revision in ("placebo", "placebo-confirm"):  # no extra draw: a placebo corpus differs only here
            answer = wrong if revision == "placebo" else gold
            think = f"{answer} wait, {answer}"
        else:
            raise R1kitError(f"arith: unknown revision {revision!r}; expected fix, confirm, placebo, placebo-confirm "
                             "or slip")
        return _completion(think, str(answer), template, self.lang)

    def guess(self, example: Example) -> str:
        # The classic mistake: evaluate left to right, ignoring precedence; else off by a little.
        nums, ops = example.meta["numbers"], example.meta["ops"]
        value = nums[0]
        for op, x in zip(ops, nums[1:]):
            value = value + x if op == "+" else value - x if op == "-" else value * x
        if str(value) == example.answer:
            rng = example_rng("guess", example.question)
            value += rng.choice([-1, 1]) * rng.randint(1, 3)
        return str(value)


# ---------------------------------------------------------------------------------------------------------------------


class CountdownTask(SyntheticTask):
    """Reach the target using each given number exactly once with + - * / and parentheses.

    Generated backwards from a random expression tree (every intermediate value a positive integer), so a solution
    always exists; the gold is that expression, but any expression using exactly the given numbers (as a multiset)
    with the target value scores 1. Answers are checked by the safe parser in r1kit.rewards.expr (no eval).

    Args:
        n_numbers: how many numbers, an int or a (low, high) range (>= 2).
        max_number: numbers are drawn from 1..max_number.
        max_target: targets are at most this.
    """

    name = "countdown"
    verifier = "countdown"  # math equivalence with the gold expression would accept the bare target

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0, n_numbers=3,
                 max_number: int = 20, max_target: int = 100, lang: str | None = None, **slice_kw):
        super().__init__(split, size, seed, lang, **slice_kw)
        self.n_numbers = _range_arg(n_numbers, "n_numbers")
        if self.n_numbers[0] < 2:
            raise R1kitError(f"countdown: n_numbers must be >= 2, got {n_numbers!r}")
        if max_number < 1 or max_target < 1:
            raise R1kitError("countdown: max_number and max_target must be >= 1")
        self.max_number, self.max_target = max_number, max_target

    def _build(self, rng, numbers: list[int]):
        # items: (expression text, value, is_atomic); combine two at random until one is left.
        items = [(str(x), Fraction(x), True) for x in numbers]
        steps = []
        while len(items) > 1:
            i, j = rng.sample(range(len(items)), 2)
            (ea, a, atom_a), (eb, b, atom_b) = items[i], items[j]
            op = rng.choice("+-*/")
            if op in "-/" and a < b:
                (ea, a, atom_a), (eb, b, atom_b) = (eb, b, atom_b), (ea, a, atom_a)
            c = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]  # values are >= 1, so b != 0
            if c <= 0 or c.denominator != 1:
                return None
            steps.append(f"{a}{op}{b}={c}")
            expr = f"{ea if atom_a else f'({ea})'}{op}{eb if atom_b else f'({eb})'}"
            items = [it for k, it in enumerate(items) if k not in (i, j)] + [(expr, c, False)]
        expr, value, _ = items[0]
        return expr, int(value), steps

    def generate(self, rng) -> Example | None:
        n = rng.randint(*self.n_numbers)
        numbers = [rng.randint(1, self.max_number) for _ in range(n)]
        built = self._build(rng, numbers)
        if built is None or built[1] > self.max_target:
            return None
        expr, target, steps = built
        shown = ", ".join(map(str, numbers))
        question = f"用 {shown} 算出 {target}" if self.lang == "zh" else f"Use {shown} to make {target}"
        return Example(question, expr, {"numbers": numbers, "target": target, "steps": steps,
                                        "scratchpad": " ".join(steps)})

    def guess(self, example: Example) -> str:
        # A random expression over the same numbers: well-formed, right by chance only.
        rng = example_rng("guess", example.question)
        nums = list(example.meta["numbers"])
        rng.shuffle(nums)
        return str(nums[0]) + "".join(f"{rng.choice('+-*/')}{x}" for x in nums[1:])
