"""Code-execution sandbox shared by code evaluation and code rewards (details in r1kit/sandbox/core.py and
docs/EVAL.md, "Sandbox").

    from r1kit.sandbox import Limits, run_asserts, run_stdio, run_many, capabilities
    run_asserts(program).verdict                      # "pass" | "fail" | "timeout" | "error"
    run_stdio(code, stdin="1 2\\n", expected="3\\n")
    capabilities()                                    # which containment layers work here
"""

from r1kit.sandbox.core import (
    GUARD_CODE,
    VERDICTS,
    Limits,
    SandboxResult,
    capabilities,
    outputs_match,
    run_asserts,
    run_many,
    run_program,
    run_stdio,
    with_timeout,
)

__all__ = ["GUARD_CODE", "Limits", "SandboxResult", "VERDICTS", "capabilities", "outputs_match", "run_asserts",
           "run_many", "run_program", "run_stdio", "with_timeout"]
