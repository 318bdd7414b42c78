"""Safe evaluation of +-*/ arithmetic written by a model (countdown answers), and literal numbers (arith answers).
Never calls eval().

The text is parsed with `ast.parse(mode="eval")` and only these nodes are walked: Expression, BinOp with + - * /,
UnaryOp with + -, and int Constants. Anything else (names, calls, attributes, subscripts, `**`, floats, strings)
is rejected. Arithmetic is exact (`fractions.Fraction`); division by zero is rejected.
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

MAX_EXPR_CHARS = 200  # a countdown answer is short; this also bounds parser recursion
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
# Model output may use typeset operators.
_REPLACE = {"\\times": "*", "\\cdot": "*", "\\div": "/", "×": "*", "·": "*", "÷": "/", "−": "-", "\\left": "",
            "\\right": "", "[": "(", "]": ")", "{": "(", "}": ")"}


_LITERAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")


class UnsafeExpression(ValueError):
    """The text is not a plain integer arithmetic expression."""


def normalize_expr(text: str) -> str:
    for a, b in _REPLACE.items():
        text = text.replace(a, b)
    return text.strip().strip("$").strip()


def parse_expr(text: str) -> tuple[Fraction, list[int]]:
    """(exact value, integer literals in order of appearance) of an arithmetic expression; raises UnsafeExpression.

    >>> parse_expr("(8*3)-4")
    (Fraction(20, 1), [8, 3, 4])
    """
    if len(text) > MAX_EXPR_CHARS:
        raise UnsafeExpression(f"expression longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise UnsafeExpression(f"not an expression: {e}") from None
    numbers: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise UnsafeExpression("division by zero")
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = walk(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        # bool is an int subclass: `True` must not count as the number 1
        if isinstance(node, ast.Constant) and type(node.value) is int:
            numbers.append(node.value)
            return Fraction(node.value)
        raise UnsafeExpression(f"{type(node).__name__} is not allowed")

    return walk(tree.body), numbers


def check_countdown(expr: str, numbers: list[int], target: int) -> bool:
    """True iff `expr` uses each of `numbers` exactly once (as a multiset) and equals `target` exactly.

    A trailing "= target" is accepted ("(8*3)-4 = 20"); the value on the right must equal the target.
    """
    text = normalize_expr(expr)
    if "=" in text:
        text, _, rhs = text.partition("=")
        try:
            if Fraction(rhs.strip()) != target:
                return False
        except (ValueError, ZeroDivisionError):
            return False
    try:
        value, used = parse_expr(text)
    except UnsafeExpression:
        return False
    return sorted(used) == sorted(numbers) and value == target


def literal_value(text: str) -> Fraction | None:
    """The value of `text` when it is one number written out (an optional sign, digits, an optional decimal part,
    thousands separators, `$...$` and a trailing period allowed), else None. "1+6+9", "32/2" and "\\frac{32}{2}"
    are computations, not values: an answer that restates the question must not score.

    >>> literal_value("$-1,024$."), literal_value("2.50"), literal_value("1+6+9")
    (Fraction(-1024, 1), Fraction(5, 2), None)
    """
    text = normalize_expr(text.strip().rstrip(".")).rstrip(".").strip()
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    return Fraction(text) if _LITERAL.fullmatch(text) else None


def check_literal(answer: str, gold: str) -> bool:
    """True iff `answer` is a literal number (see literal_value) equal to the gold value."""
    value, target = literal_value(answer), literal_value(gold)
    return value is not None and target is not None and value == target
