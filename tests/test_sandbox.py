"""The code-execution sandbox: verdicts, output comparison, a suite of hostile programs (all contained), and
HumanEval's canonical solutions (pass) and broken ones (fail) through it."""

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from r1kit.errors import R1kitError
from r1kit.sandbox import Limits, capabilities, outputs_match, run_asserts, run_many, run_program, run_stdio

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")

TIMEOUT = 2.0
CAPS = capabilities() if sys.platform == "linux" else {}
FULL = CAPS.get("netns") and CAPS.get("mountns") and CAPS.get("pidns") and CAPS.get("uid_dropped")


# ---------------------------------------------------------------------------------------------------------------------
# Basics


def test_capabilities_report():
    print("sandbox capabilities:", CAPS)
    assert CAPS["probe"] == "pass"
    if os.geteuid() == 0:  # as root on Linux every layer is expected to work (the project's machines and CI)
        assert FULL, CAPS
        assert CAPS["private_proc"] and "/tmp" in CAPS["masked"] and "/dev" in CAPS["masked"]


def test_verdicts_and_stdio():
    assert run_asserts("def f(x):\n    return x + 1\nassert f(1) == 2\n").verdict == "pass"
    r = run_asserts("assert 1 == 2, 'nope'\n")
    assert r.verdict == "fail" and "AssertionError: nope" in r.details
    r = run_stdio("a, b = map(int, input().split())\nprint(a + b)\nprint('1.50')\n", "3 4\n", "7\n1.5\n")
    assert r.verdict == "pass", r.details
    r = run_stdio("print(8)\n", "", "7\n")
    assert r.verdict == "fail" and "line 1" in r.details
    r = run_program("import time\ntime.sleep(5)\n", limits=Limits(timeout_s=0.5))
    assert r.verdict == "timeout" and r.duration_s < 0.5 + 2
    assert run_program("raise SystemExit(3)\n").exit_code == 3


def test_outputs_match_rules():
    assert outputs_match("1 2\n3\n\n", "1 2\n3") == (True, "")
    assert outputs_match("  1.0  \n", "1")[0]
    assert outputs_match("1e2\n", "100\n")[0]
    assert not outputs_match("1 2\n", "1  3\n")[0]
    assert not outputs_match("abc\n", "abd\n")[0]
    assert outputs_match("1\n2\n", "1\n")[1] == "expected 1 lines, got 2"


def test_limits_validation():
    with pytest.raises(R1kitError):
        Limits(timeout_s=0)
    with pytest.raises(R1kitError):
        Limits(memory_mb=0)


def test_clean_environment_and_isolated_python(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/nonexistent-r1kit")
    code = ("import os, sys\nprint(sorted(os.environ))\nprint(sys.flags.isolated, sys.flags.no_site)\n"
            "print(os.getcwd() == os.environ['HOME'])\n")
    r = run_program(code)
    assert r.verdict == "pass", r.details
    env, flags, home = r.stdout.splitlines()
    assert env == str(sorted(["HOME", "LANG", "LC_ALL", "PATH", "TMPDIR"]))
    assert flags == "1 1" and home == "True"


def test_fallback_guard_blocks_network_and_processes():
    """Without namespaces (non-root machines) the audit-hook guard is the only network barrier: weaker, but it
    refuses sockets, process creation and ctypes."""
    lim = Limits(timeout_s=5)
    for code in ("import socket\nsocket.socket()\n", "import os\nos.system('true')\n",
                 "import subprocess\nsubprocess.run(['true'])\n", "import ctypes\nctypes.CDLL(None)\n"):
        r = run_program(code, limits=lim, namespaces=False, drop_uid=False)
        assert r.verdict == "fail" and "not allowed" in r.details, (code, r.details)
        assert r.isolation["guard"] and not r.isolation["netns"]
    assert run_program("print(sum(range(5)))\n", namespaces=False, drop_uid=False).stdout == "10\n"


# ---------------------------------------------------------------------------------------------------------------------
# Hostile programs: each "passes" only if its attack worked. All run at once (in parallel).

HOSTILE = {
    "fork_bomb": """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
""",
    "memory_bomb": """
chunks = []
while True:
    chunks.append(bytearray(1 << 26))
""",
    "infinite_loop": "while True:\n    pass\n",
    "busy_threads": """
import threading
def spin():
    while True:
        pass
threads = [threading.Thread(target=spin, daemon=True) for _ in range(32)]
for t in threads:
    t.start()
for t in threads:
    t.join()
""",
    "network_connect": """
import socket
s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
assert s.recv(64) == b"{token}"
""",
    "env_secret": """
import os
seen = repr(dict(os.environ))
for p in ("/proc/self/environ", "/proc/1/environ", "/proc/%d/environ" % os.getppid(), "/proc/{harness}/environ"):
    try:
        seen += open(p, "rb").read().decode(errors="replace")
    except OSError:
        pass
assert "{token}" in seen
""",
    "home_files": """
import os
seen, root_files = "", []
for p in (os.path.expanduser("~/.bashrc"), "{home}/.bashrc", "/root/.bashrc", "/root/.gitconfig"):
    try:
        seen += open(p).read()
        root_files.append(p)
    except OSError:
        pass
try:  # the masked /root holds only the re-exposed Python installation (e.g. .pyenv), nothing else
    root_files += [n for n in os.listdir("/root") if n != ".pyenv"]
except OSError:
    pass
assert "{token}" in seen or root_files, root_files
""",
    "write_outside": """
import os
wrote = []
for p in ("{outside}/victim.txt", "{outside}/new.txt", "/var/tmp/{mark}/new.txt", "/dev/shm/{mark}/new.txt",
          "/run/lock/{mark}-new.txt", "{home}/.bashrc"):
    try:
        with open(p, "a") as f:
            f.write("pwned")
        wrote.append(p)
    except OSError:
        pass
try:  # the sandbox's own /tmp: allowed, and must not show up on the host
    open("/tmp/{mark}-escape.txt", "w").write("x")
except OSError:
    pass
assert wrote, wrote
""",
    "kill_parent": """
import os, signal
killed = []
for pid in (os.getppid(), {harness}, {sentinel}, 1):
    try:
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    except OSError:
        pass
for pgid in ({harness}, {sentinel}):
    try:
        os.killpg(pgid, signal.SIGKILL)
        killed.append(-pgid)
    except OSError:
        pass
assert killed, killed
""",
    "kill_everything": """
import os, signal
os.kill(-1, signal.SIGKILL)  # every process this uid may signal (never the caller itself)
raise SystemExit(1)
""",
    "huge_stdout": """
import sys
while True:
    sys.stdout.write("x" * 65536)
""",
    "deep_recursion": """
import sys
sys.setrecursionlimit(10 ** 8)
def f(n):
    return f(n + 1) + 1
f(0)
""",
    "os_system": """
import os
rcs = [os.system("cat /root/.bashrc > /dev/null 2>&1"),
       os.system("kill -9 {harness} {sentinel} 2>/dev/null"),
       os.system("echo pwned >> {outside}/victim.txt 2>/dev/null"),
       os.system("sudo -n true 2>/dev/null"), os.system("su -c true root < /dev/null 2>/dev/null")]
assert 0 in rcs, rcs
""",
    "ctypes_segfault": "import ctypes\nctypes.string_at(0)\n",
    "ctypes_libc": """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
ok = [libc.setuid(0) == 0, libc.unshare(0x00020000) == 0, libc.chroot(b"/") == 0,
      libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0, libc.kill({harness}, 0) == 0]
assert any(ok), ok
""",
    "dev_files": """
import os
opened = []
for p in ("/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/tty"):
    try:
        with open(p, "rb") as f:
            f.read(1)
        opened.append(p)
    except OSError:
        pass
assert opened, opened
""",
    "signal_tamper": """
import signal
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU, signal.SIGALRM, signal.SIGUSR1):
    signal.signal(s, signal.SIG_IGN)
while True:
    pass
""",
    "long_sleep": "import time\ntime.sleep(3600)\n",
    "harness_visible": """
import os
assert os.path.exists("/proc/{harness}/cmdline") or os.path.exists("/proc/{sentinel}/cmdline")
""",
    "setsid_daemon": """
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "{daemon}"])
    os._exit(0)
raise SystemExit(1)
""",
    "setuid_root": "import os\nos.setuid(0)\nassert os.getuid() == 0\n",
    "fill_disk": """
with open("big.bin", "wb") as f:
    while True:
        f.write(b"\\0" * (1 << 20))
""",
    "proc_root_escape": """
import os
found = []
for p in ("/proc/1/root/root", "/proc/{harness}/root/root", "/proc/{harness}/cwd"):
    try:
        found.append((p, os.listdir(p)))
    except OSError:
        pass
assert found, found
""",
}


def _serve(sock: socket.socket, token: bytes, hits: list, stop: threading.Event):
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except OSError:
            continue
        hits.append(1)
        try:
            conn.sendall(token)
        finally:
            conn.close()


def _uid_processes(uids: set[int]) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid in uids:
                    out.append(int(d))
            except OSError:
                pass
    return out


def _cmdline_processes(marker: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    out.append(int(d))
            except OSError:
                pass
    return out


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    token = secrets.token_hex(8)
    mark = f"r1kit-sbx-test-{token}"
    base = tmp_path_factory.mktemp("sandbox")
    home = base / "home"
    home.mkdir()
    (home / ".bashrc").write_text(f"export SECRET={token}\n")
    outside = base / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    victim = outside / "victim.txt"
    victim.write_text("original\n")
    victim.chmod(0o666)
    shared = [Path("/var/tmp") / mark, Path("/dev/shm") / mark]
    for d in shared:
        d.mkdir()
        d.chmod(0o777)
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    hits, stop = [], threading.Event()
    server = threading.Thread(target=_serve, args=(sock, token.encode(), hits, stop), daemon=True)
    server.start()
    sentinel = subprocess.Popen(["sleep", "300"], start_new_session=True)
    daemon = f"{4000 + secrets.randbelow(1000)}.{secrets.randbelow(10**6)}"
    fmt = dict(port=port, token=token, harness=os.getpid(), sentinel=sentinel.pid, home=home, outside=outside,
               mark=mark, daemon=daemon)
    old_home, old_secret = os.environ.get("HOME"), os.environ.get("R1KIT_SANDBOX_TEST_SECRET")
    os.environ["HOME"], os.environ["R1KIT_SANDBOX_TEST_SECRET"] = str(home), token
    try:
        names = list(HOSTILE)
        jobs = [(HOSTILE[n].format(**fmt), "", Limits(timeout_s=TIMEOUT)) for n in names]
        jobs.append(("print(sum(range(10)))\n", "", Limits(timeout_s=30)))  # a benign run beside the attacks
        t0 = time.monotonic()
        results = run_many(run_program, jobs, max_workers=12)
        wall = time.monotonic() - t0
        time.sleep(0.5)  # give the kernel a moment to reap the namespaces
        yield {"results": dict(zip(names + ["control"], results)), "wall": wall, "hits": hits, "victim": victim,
               "outside": outside, "home": home, "shared": shared, "mark": mark, "sentinel": sentinel,
               "daemon": daemon, "token": token}
    finally:
        for key, val in (("HOME", old_home), ("R1KIT_SANDBOX_TEST_SECRET", old_secret)):
            if val is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = val
        stop.set()
        server.join(timeout=2)
        sock.close()
        sentinel.kill()
        sentinel.wait()
        for d in shared:
            shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_contained(hostile, name):
    r = hostile["results"][name]
    print(f"{name}: {r.verdict} ({r.details}) in {r.duration_s:.2f}s")
    assert r.verdict in ("fail", "timeout"), (name, r.verdict, r.details, r.stderr[-800:])
    assert r.duration_s <= TIMEOUT + 2, (name, r.duration_s)
    if FULL:
        assert r.isolation.get("netns") and r.isolation.get("pidns") and r.isolation.get("mountns"), r.isolation


def test_hostile_side_effects(hostile):
    res = hostile["results"]
    print(f"{len(HOSTILE)} hostile programs in {hostile['wall']:.1f}s wall")
    assert res["control"].verdict == "pass" and res["control"].stdout == "45\n", res["control"].details
    # the harness (this process) is alive; so is a root process the attacks tried to kill
    assert hostile["sentinel"].poll() is None
    # no connection reached the loopback server
    assert hostile["hits"] == []
    # nothing outside the sandbox changed
    assert hostile["victim"].read_text() == "original\n"
    assert sorted(p.name for p in hostile["outside"].iterdir()) == ["victim.txt"]
    assert (hostile["home"] / ".bashrc").read_text() == f"export SECRET={hostile['token']}\n"
    for d in hostile["shared"]:
        assert list(d.iterdir()) == [], d
    assert not Path(f"/tmp/{hostile['mark']}-escape.txt").exists()
    assert not Path(f"/run/lock/{hostile['mark']}-new.txt").exists()
    # output was capped, and no process of any sandbox uid (fork bomb, daemon) outlived its run
    big = res["huge_stdout"]
    assert big.stdout_truncated and len(big.stdout) <= Limits().max_output_bytes
    uids = {r.isolation["uid"] for r in res.values() if r.isolation.get("uid") is not None}
    deadline = time.monotonic() + 5
    while (_uid_processes(uids) or _cmdline_processes(hostile["daemon"])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _uid_processes(uids) == []
    assert _cmdline_processes(hostile["daemon"]) == []


def test_parent_kill_through_pid_namespace():
    """os.kill(os.getppid(), 9) hits the sandbox's init (root, another uid: EPERM), never the harness."""
    r = run_program("import os\nprint(os.getppid())\nos.kill(os.getppid(), 9)\n")
    assert r.verdict == "fail"
    if FULL:
        assert r.stdout.strip() == "1" and "PermissionError" in r.details


# ---------------------------------------------------------------------------------------------------------------------
# HumanEval through the sandbox

human_eval = pytest.importorskip("r1kit.eval.humaneval")


def _problems():
    try:
        return human_eval.load_problems()
    except R1kitError as e:
        pytest.skip(str(e))


def _run(problems, completions):
    jobs = [(human_eval.program(p, c), Limits(timeout_s=5)) for p, c in zip(problems, completions)]
    return run_many(run_asserts, jobs, max_workers=4)


def _off_by_one(solution: str) -> str:
    """Mutate the first integer literal (n -> n + 1); without one, negate the first return value."""
    m = re.search(r"(?<![\w.])(\d+)(?![\w.])", solution)
    if m:
        return solution[: m.start()] + str(int(m.group(1)) + 1) + solution[m.end():]
    return solution.replace("return ", "return not ", 1)


def test_humaneval_canonical_pass_and_broken_fail():
    problems = _problems()
    assert len(problems) == 164
    t0 = time.monotonic()
    good = _run(problems, [p["canonical_solution"] for p in problems])
    bad = _run(problems, ["    return None\n"] * len(problems))
    failing = [(p["task_id"], r.verdict, r.details) for p, r in zip(problems, good) if not r.passed]
    print(f"HumanEval canonical {164 - len(failing)}/164, 'return None' {sum(r.passed for r in bad)}/164 "
          f"in {time.monotonic() - t0:.1f}s")
    assert failing == []
    assert sum(r.passed for r in bad) == 0


def test_humaneval_off_by_one_mutants_fail_20():
    problems = _problems()[:20]
    res = _run(problems, [_off_by_one(p["canonical_solution"]) for p in problems])
    survivors = [p["task_id"] for p, r in zip(problems, res) if r.passed]
    print(f"off-by-one mutants passing: {survivors}")
    assert len(survivors) <= 4, survivors  # a mutant may be equivalent (e.g. a changed bound that tests miss)


def test_dead_harness_leaves_no_sandbox_behind(tmp_path):
    """A harness killed mid-run (no chance to time out its programs) takes its sandboxes down with it."""
    marker = f"{secrets.randbelow(10**9)}"
    script = tmp_path / "harness.py"
    script.write_text(
        "import os, threading, time\n"
        "from r1kit.sandbox import Limits, run_program\n"
        f"code = 'import os, time\\nos.execv(\"/bin/sleep\", [\"sleep\", \"3600.{marker}\"])\\n'\n"
        "threading.Thread(target=run_program, args=(code,), kwargs={'limits': Limits(timeout_s=600)},"
        " daemon=True).start()\n"
        "deadline = time.monotonic() + 20\n"
        "def running():\n"
        "    for d in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        f"            if b'3600.{marker}' in open(f'/proc/{{d}}/cmdline', 'rb').read():\n"
        "                return True\n"
        "        except OSError:\n"
        "            pass\n"
        "while not running() and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "os._exit(0 if running() else 7)  # die hard while the sandboxed program is still running\n")
    # its temporary folder stays behind (it never got to clean up): keep it under tmp_path
    subprocess.run([sys.executable, str(script)], timeout=60, check=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    deadline = time.monotonic() + 5
    while _cmdline_processes(f"3600.{marker}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _cmdline_processes(f"3600.{marker}") == []
