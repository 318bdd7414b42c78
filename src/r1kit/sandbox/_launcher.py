"""Sandbox launcher: runs ONE untrusted Python program. Executed as its own process by r1kit.sandbox.core
(`python -I -S _launcher.py CONFIG.json`, in a new session), never imported. Standard library only.

Process tree (pids as the host sees them; "ns" = the new namespaces where the kernel allows them):

    harness (r1kit)                      waits with a wall-clock timeout, then killpg()s the launcher's group
      launcher (root, this file)         unshare(NET | NS | PID), fork
        init (root, pid 1 in the pid ns) mounts (private /proc, tmpfs over /tmp /root /home ...), fork, reap, report
          worker (random unused uid)     rlimits, drop privileges, no_new_privs, exec `python -I -S solution.py`

The worker's parent is `init`, a root process in another uid, so `os.kill(os.getppid(), 9)` fails with EPERM, and
the harness lives outside the pid namespace, where the worker cannot even name it. When `init` exits (normally, or
killed with the launcher's process group on timeout) the kernel kills everything left in the pid namespace, so
daemons that called setsid() die too. Each feature is best-effort: whatever the kernel refuses is recorded in the
status file and the harness reports it (r1kit.sandbox.capabilities()).

Status: init writes JSON lines to the status file: the features once the sandbox is set up, then a final object with
the features, the worker's exit code or signal, its CPU time and peak RSS, and a setup error if the worker never
reached exec. The harness reads the last complete line.
"""

import ctypes
import errno
import json
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
O_PATH = getattr(os, "O_PATH", 0o10000000)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(src, target, fstype, flags=0, data=None) -> None:
    enc = lambda s: None if s is None else str(s).encode()  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), "prctl")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def setup_mounts(cfg: dict, feats: dict) -> str:
    """In the private mount namespace: a fresh /proc for the pid namespace, empty tmpfs over the masked folders, the
    Python installation re-exposed read-only, and a size-capped tmpfs /tmp owned by the worker as its working dir.
    Returns the worker's working directory."""
    uid = cfg["uid"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates back to the host
    if feats["pidns"]:
        try:
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            feats["private_proc"] = True
        except OSError:
            feats["private_proc"] = False
    # Paths to keep visible (the interpreter) may sit under a mask (pyenv in /root, uv in ~/.local): hold them open.
    keep = [(p, os.open(p, O_PATH | os.O_DIRECTORY)) for p in cfg["expose"] if os.path.isdir(p)]
    masked = []
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    for path in cfg["masks"]:
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        if path == "/dev":
            minimal_dev(f"size={cfg['shm_mb']}m,mode=0700{owner}")
            masked.append(path)
            continue
        if path == "/tmp":
            opts = f"size={cfg['tmpfs_mb']}m,mode=0700{owner}"
        elif path == "/dev/shm":
            opts = f"size={cfg['shm_mb']}m,mode=0700{owner}"
        else:
            opts = "size=1m,mode=0755"
        mount("r1kit-sandbox", path, "tmpfs", MS_NOSUID | MS_NODEV, opts)
        masked.append(path)
    for path, fd in keep:
        if any(_under(path, m) for m in masked):
            os.makedirs(path, mode=0o755, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fd)
    for path in masked:  # the empty masks become read-only (the worker's /tmp and /dev/shm stay writable)
        if path not in ("/tmp", "/dev/shm", "/dev"):
            mount(None, path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    feats["masked"] = masked
    return "/tmp" if "/tmp" in masked else cfg["workdir"]


DEV_NODES = ("null", "zero", "full", "random", "urandom")


def minimal_dev(shm_opts: str) -> None:
    """Replace /dev with a read-only tmpfs holding only null, zero, full, random, urandom (bound from the real
    ones), the fd/stdin/stdout/stderr links and a private /dev/shm: no disks, /dev/mem, /dev/kmsg or terminals."""
    nodes = [(n, os.open(f"/dev/{n}", O_PATH)) for n in DEV_NODES if os.path.exists(f"/dev/{n}")]
    mount("r1kit-sandbox", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=1m,mode=0755")
    for name, fd in nodes:
        open(f"/dev/{name}", "w").close()
        mount(f"/proc/self/fd/{fd}", f"/dev/{name}", None, MS_BIND)
        os.close(fd)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/shm")
    mount("r1kit-sandbox", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, shm_opts)
    mount(None, "/dev", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "size=1m,mode=0755")


def set_limits(lim: dict) -> None:
    def both(kind, value, hard=None):
        if value is not None:
            resource.setrlimit(kind, (value, value if hard is None else hard))

    both(resource.RLIMIT_CORE, 0)
    both(resource.RLIMIT_CPU, lim["cpu_s"], lim["cpu_s"] + 1)  # SIGXCPU at the soft limit, SIGKILL at the hard
    both(resource.RLIMIT_AS, lim["as_bytes"])
    both(resource.RLIMIT_FSIZE, lim["fsize_bytes"])
    both(resource.RLIMIT_NPROC, lim["nproc"])  # per uid: the worker's uid is unique to this run
    both(resource.RLIMIT_NOFILE, lim["nofile"])


def worker(cfg: dict, feats: dict, workdir: str, err_w: int) -> None:
    """Child of init: limits, privileges, exec. Never returns; a setup failure is written to err_w."""
    try:
        os.setsid()  # own session: no controlling terminal
        if feats["pidns"]:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)  # Python changed some of these; the program starts with defaults
        set_limits(cfg["limits"])
        uid = cfg["uid"]
        os.chdir(workdir)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)  # drops every capability: no kill/ptrace of root processes, no mounts, no raw sockets
        try:
            prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries (su, sudo, ping) cannot regain privileges
        except OSError:
            pass
        argv = [cfg["python"], "-I", "-S"]
        if cfg["guard"]:
            argv += ["-c", cfg["guard_code"]]
        argv += [cfg["script"]]
        os.execve(cfg["python"], argv, cfg["env"])
    except BaseException as e:  # noqa: BLE001 - report anything, then die without running Python cleanup
        try:
            os.write(err_w, f"{type(e).__name__}: {e}".encode()[:2000])
        finally:
            os._exit(126)


def init(cfg: dict, feats: dict, status_fd: int) -> None:
    """pid 1 of the new pid namespace (or a plain child without one): mounts, then the worker, then the report."""
    status = {"features": feats}
    try:
        if feats["pidns"]:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the launcher died (killed on timeout): take the namespace down
        # A backstop if the harness never kills us: exit (and so end the namespace) a little after its own deadline.
        signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
        signal.alarm(cfg["max_wall_s"])
        if not feats["mountns"] and not cfg["python_world_ok"]:
            cfg["uid"] = None  # another uid could not reach the interpreter (e.g. pyenv under /root, mode 0700)
        feats["uid"] = cfg["uid"]
        workdir = cfg["workdir"]
        if feats["mountns"]:
            workdir = setup_mounts(cfg, feats)
        cfg["env"].update(HOME=workdir, TMPDIR=workdir)
        os.write(status_fd, (json.dumps({"features": feats}) + "\n").encode())  # known even if we are killed later
        script = os.path.join(workdir, cfg["script"])
        with open(script, "wb") as f:
            f.write(cfg["code"].encode())
        if cfg["uid"] is not None:
            os.chown(workdir, cfg["uid"], cfg["uid"])
            os.chown(script, cfg["uid"], cfg["uid"])
        err_r, err_w = os.pipe()  # close-on-exec: EOF means the worker reached exec
        pid = os.fork()
        if pid == 0:
            os.close(err_r)
            worker(cfg, feats, workdir, err_w)
        os.close(err_w)
        chunks = []
        while chunk := os.read(err_r, 4096):
            chunks.append(chunk)
        os.close(err_r)
        if chunks:
            status["setup_error"] = b"".join(chunks).decode(errors="replace")
        _, st, ru = os.wait4(pid, 0)
        if os.WIFSIGNALED(st):
            status["signal"] = os.WTERMSIG(st)
        else:
            status["exit_code"] = os.WEXITSTATUS(st)
        status["cpu_s"] = round(ru.ru_utime + ru.ru_stime, 3)
        status["max_rss_kb"] = ru.ru_maxrss
        kill_leftovers(cfg, feats)
    except BaseException as e:  # noqa: BLE001
        status["setup_error"] = f"{type(e).__name__}: {e}"
    os.write(status_fd, (json.dumps(status) + "\n").encode())
    os._exit(0)


def kill_leftovers(cfg: dict, feats: dict) -> None:
    """Kill whatever the program left running (daemons, fork-bomb children)."""
    if feats["pidns"]:
        try:
            os.kill(-1, signal.SIGKILL)  # from pid 1: every other process of the namespace
        except ProcessLookupError:
            pass
    elif cfg["uid"] is not None:
        pid = os.fork()
        if pid == 0:  # a killer with the worker's uid: kill(-1) reaches exactly that uid's processes
            try:
                os.setgroups([])
                os.setgid(cfg["uid"])
                os.setuid(cfg["uid"])
                os.kill(-1, signal.SIGKILL)
            except BaseException:  # noqa: BLE001
                pass
            os._exit(0)
        os.waitpid(pid, 0)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        cfg = json.load(f)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the harness died: so do we (and with us the sandbox)
    if os.getppid() != cfg["harness_pid"]:
        os._exit(3)  # it died before the line above took effect
    status_fd = os.open(cfg["status"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    feats = {"netns": False, "mountns": False, "pidns": False, "uid": None, "guard": bool(cfg["guard"])}
    if cfg["namespaces"]:
        for name, flag in (("netns", CLONE_NEWNET), ("mountns", CLONE_NEWNS), ("pidns", CLONE_NEWPID)):
            try:
                unshare(flag)
                feats[name] = True
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EINVAL, errno.ENOSPC, errno.EUSERS, errno.ENOSYS):
                    raise
    if not feats["netns"] and cfg["guard_if_no_netns"]:
        cfg["guard"] = feats["guard"] = True
    pid = os.fork()
    if pid == 0:
        init(cfg, feats, status_fd)
    os.close(status_fd)
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
