"""Sandbox launcher: runs ONE untrusted Python program. Executed as its own process by r1kit.sandbox.core
(`python -I -S _launcher.py CONFIG.json`, in a new session), never imported. Standard library only.

Process tree (pids as the host sees them; "ns" = the new namespaces where the kernel allows them):

    harness (r1kit)                      waits with a wall-clock timeout, then killpg()s the launcher's group
      launcher (root, this file)         unshare(NET | NS | PID | IPC | UTS), fork
        init (root, pid 1 in the pid ns) builds the root filesystem, fork, collect reports, reap, report
          worker (random unused uid)     cgroup, rlimits, drop privileges, no_new_privs, seccomp,
                                         exec `python -I -S -c DRIVER` (the driver runs the program, then the tests)

The worker's parent is `init`, a root process in another uid, so `os.kill(os.getppid(), 9)` fails with EPERM, and
the harness lives outside the pid namespace, where the worker cannot even name it. When `init` exits (normally, or
killed with the launcher's process group on timeout) the kernel kills everything left in the pid namespace, so
daemons that called setsid() die too; the IPC namespace (SysV shared memory, queues, semaphores, POSIX message
queues) dies with its last process. Each feature is best-effort: whatever the kernel refuses is recorded in the
status file and the harness reports it (r1kit.sandbox.capabilities()).

Status: init writes JSON lines to the status file: the features once the sandbox is set up, then a final object with
the features, the worker's exit code or signal, its CPU time and peak RSS, the driver's reports (raw; the harness
checks them against the run's secret) and a setup error if the worker never reached exec. The harness reads the last
complete line.
"""

import ctypes
import errno
import json
import os
import platform
import resource
import signal
import struct
import sys
import threading

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
O_PATH = getattr(os, "O_PATH", 0o10000000)
REPORT_FD = 3  # the driver's report channel (the write end of a pipe to init)
MAX_REPORT_BYTES = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


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


# ---------------------------------------------------------------------------------------------------------------------
# seccomp: a classic-BPF filter over the syscall number (and clone's flags), written here rather than through
# libseccomp so the launcher stays standard-library only. Denied calls fail with EPERM; clone3 fails with ENOSYS
# (its flags sit in memory a filter cannot read), and libc then falls back to clone, whose flags it can.

# name: (x86_64, aarch64). pivot_root/chroot/setns/mount API: no filesystem or namespace changes; ptrace and
# process_vm_*: no reading other processes; keyctl family: no kernel keyring (keys would outlive the run, charged to
# its uid); bpf, perf_event_open, userfaultfd, module and kexec calls: the usual kernel attack surface.
SYSCALLS = {
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "chroot": (161, 51), "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "add_key": (248, 217), "request_key": (249, 218), "keyctl": (250, 219), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142),
}
CLONE, CLONE3 = (56, 220), (435, 435)
ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column in SYSCALLS, AUDIT_ARCH_*
NS_FLAGS = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
RET_ALLOW, RET_KILL, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
LD_ABS_W, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06


def seccomp_filter(machine: str) -> bytes | None:
    """The filter program (struct sock_filter[]) for this architecture, or None where the tables have no entry."""
    if machine not in ARCHES:
        return None
    col, audit_arch = ARCHES[machine]
    ins = lambda code, jt, jf, k: struct.pack("HBBI", code, jt, jf, k)  # noqa: E731
    prog = [ins(LD_ABS_W, 0, 0, 4), ins(JEQ, 1, 0, audit_arch), ins(RET, 0, 0, RET_KILL),  # another ABI: kill
            ins(LD_ABS_W, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI (nr | 0x40000000) would bypass the numbers below
        prog += [ins(JGE, 0, 1, 0x40000000), ins(RET, 0, 0, RET_ERRNO | errno.EPERM)]
    for nrs in SYSCALLS.values():
        prog += [ins(JEQ, 0, 1, nrs[col]), ins(RET, 0, 0, RET_ERRNO | errno.EPERM)]
    prog += [ins(JEQ, 0, 1, CLONE3[col]), ins(RET, 0, 0, RET_ERRNO | errno.ENOSYS),
             ins(JEQ, 0, 3, CLONE[col]), ins(LD_ABS_W, 0, 0, 16),  # clone: the low word of its flags (args[0])
             ins(JSET, 0, 1, NS_FLAGS), ins(RET, 0, 0, RET_ERRNO | errno.EPERM), ins(RET, 0, 0, RET_ALLOW)]
    return b"".join(prog)


def install_seccomp(prog: bytes) -> None:
    buf = ctypes.create_string_buffer(prog, len(prog))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
    _check(_libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0), "seccomp")


# ---------------------------------------------------------------------------------------------------------------------
# Root filesystem: a fresh tmpfs holding only what the run needs, read-only, then pivot_root into it. Everything
# else on the host (home folders, /run and /var with their unix sockets, the harness's files) is simply absent.


def _bind_ro(src: str, dst: str) -> None:
    if os.path.isdir(src):
        os.makedirs(dst, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
        open(dst, "w").close()
    mount(src, dst, None, MS_BIND | MS_REC)
    mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def setup_root(cfg: dict, feats: dict) -> str:
    """Build the worker's root in a private mount namespace and pivot into it. Returns its working directory."""
    uid = cfg["uid"]
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates back to the host
    new = cfg["root"]
    mount("r1kit-sandbox", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    exposed = []
    for path in cfg["expose"]:
        if os.path.islink(path) and os.path.dirname(path) == "/":  # /bin -> usr/bin on merged-/usr systems
            os.symlink(os.readlink(path), new + path)
            exposed.append(path)
        elif os.path.exists(path):
            _bind_ro(os.path.realpath(path), new + path)
            exposed.append(path)
    os.mkdir(new + "/proc")
    mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    feats["private_proc"] = feats["pidns"]
    os.mkdir(new + "/dev")
    minimal_dev(new + "/dev", f"size={cfg['shm_mb']}m,mode=0700{owner}")
    os.mkdir(new + "/tmp")
    mount("r1kit-sandbox", new + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmpfs_mb']}m,mode=0700{owner}")
    os.chdir(new)
    _check(_libc.syscall(ctypes.c_long(cfg["pivot_root_nr"]), b".", b"."), "pivot_root")  # new root over old
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")  # ... and the old one detached from under it
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    feats["fs_root"] = "pivot_root"
    feats["exposed"] = exposed
    return "/tmp"


DEV_NODES = ("null", "zero", "full", "random", "urandom")


def minimal_dev(dev: str, shm_opts: str) -> None:
    """A read-only tmpfs /dev holding only null, zero, full, random, urandom (bound from the real ones), the
    fd/stdin/stdout/stderr links and a private /dev/shm: no disks, /dev/mem, /dev/kmsg or terminals."""
    nodes = [(n, os.open(f"/dev/{n}", O_PATH)) for n in DEV_NODES if os.path.exists(f"/dev/{n}")]
    mount("r1kit-sandbox", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=1m,mode=0755")
    for name, fd in nodes:
        open(f"{dev}/{name}", "w").close()
        mount(f"/proc/self/fd/{fd}", f"{dev}/{name}", None, MS_BIND)
        os.close(fd)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(f"{dev}/shm")
    mount("r1kit-sandbox", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, shm_opts)
    mount(None, dev, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "size=1m,mode=0755")


# ---------------------------------------------------------------------------------------------------------------------
# Worker


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


def worker(cfg: dict, feats: dict, workdir: str, err_w: int, report_w: int, cgroup_fds: list[int]) -> None:
    """Child of init: cgroup, limits, privileges, seccomp, exec. Never returns; a setup failure goes to err_w."""
    try:
        os.setsid()  # own session: no controlling terminal
        if feats["pidns"]:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        for fd in cgroup_fds:  # join the run's cgroup(s): every process the program starts is counted there
            os.write(fd, b"0")
            os.close(fd)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)  # Python changed some of these; the program starts with defaults
        if report_w != REPORT_FD:
            os.dup2(report_w, REPORT_FD)  # inheritable
            os.close(report_w)
        else:
            os.set_inheritable(REPORT_FD, True)
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
        if cfg["seccomp"]:
            install_seccomp(bytes.fromhex(cfg["seccomp"]))
        driver = (cfg["guard_code"] if cfg["guard"] else "") + cfg["driver"]
        argv = [cfg["python"], "-I", "-S", "-c", driver]
        os.execve(cfg["python"], argv, cfg["env"])
    except BaseException as e:  # noqa: BLE001 - report anything, then die without running Python cleanup
        try:
            os.write(err_w, f"{type(e).__name__}: {e}".encode()[:2000])
        finally:
            os._exit(126)


def _collect(fd: int, out: list) -> None:
    """Read the driver's reports until every writer is gone (capped: a flood is kept up to the cap and drained)."""
    size = 0
    while chunk := os.read(fd, 65536):
        if size < MAX_REPORT_BYTES:
            out.append(chunk)
        size += len(chunk)


def init(cfg: dict, feats: dict, status_fd: int) -> None:
    """pid 1 of the new pid namespace (or a plain child without one): root filesystem, the worker, the report."""
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
        # Opened before the root changes (the cgroup file system is not in the sandbox); the worker writes to them.
        cgroup_fds = [os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY) for d in cfg["cgroups"]]
        workdir = cfg["workdir"]
        if feats["mountns"]:
            workdir = setup_root(cfg, feats)
        if feats["utsns"]:
            import socket

            socket.sethostname("sandbox")
        cfg["env"].update(HOME=workdir, TMPDIR=workdir)
        os.write(status_fd, (json.dumps({"features": feats}) + "\n").encode())  # known even if we are killed later
        files = {cfg["script"]: cfg["code"].encode(), cfg["run_file"]: cfg["run"].encode()}
        for name, data in files.items():
            path = os.path.join(workdir, name)
            with open(path, "wb") as f:
                f.write(data)
            if cfg["uid"] is not None:
                os.chown(path, cfg["uid"], cfg["uid"])
        if cfg["uid"] is not None:
            os.chown(workdir, cfg["uid"], cfg["uid"])
        err_r, err_w = os.pipe()  # close-on-exec: EOF means the worker reached exec
        report_r, report_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(err_r)
            os.close(report_r)
            worker(cfg, feats, workdir, err_w, report_w, cgroup_fds)
        os.close(err_w)
        os.close(report_w)
        for fd in cgroup_fds:
            os.close(fd)
        reports: list[bytes] = []
        reader = threading.Thread(target=_collect, args=(report_r, reports), daemon=True)
        reader.start()
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
        reader.join(timeout=1.0)  # leftovers holding the pipe are dead now (or, without a pid namespace, ignored)
        status["reports"] = b"".join(reports)[:MAX_REPORT_BYTES].decode(errors="replace")
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


NAMESPACES = (("netns", CLONE_NEWNET), ("mountns", CLONE_NEWNS), ("pidns", CLONE_NEWPID), ("ipcns", CLONE_NEWIPC),
              ("utsns", CLONE_NEWUTS))


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        cfg = json.load(f)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the harness died: so do we (and with us the sandbox)
    if os.getppid() != cfg["harness_pid"]:
        os._exit(3)  # it died before the line above took effect
    status_fd = os.open(cfg["status"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    feats = {name: False for name, _ in NAMESPACES}
    feats.update(uid=None, guard=bool(cfg["guard"]), seccomp=False, fs_root=None, private_proc=False,
                 cgroup=cfg["cgroup_kind"], nproc=cfg["limits"]["nproc"], as_mb=cfg["limits"]["as_bytes"] >> 20)
    if cfg["namespaces"]:
        for name, flag in NAMESPACES:
            try:
                unshare(flag)
                feats[name] = True
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EINVAL, errno.ENOSPC, errno.EUSERS, errno.ENOSYS):
                    raise
    if not feats["netns"] and cfg["guard_if_no_netns"]:
        cfg["guard"] = feats["guard"] = True
    machine = platform.machine()
    prog = seccomp_filter(machine)
    if prog is not None and cfg["use_seccomp"]:
        cfg["seccomp"] = prog.hex()
        cfg["pivot_root_nr"] = SYSCALLS["pivot_root"][ARCHES[machine][0]]
        feats["seccomp"] = True
    else:
        cfg["seccomp"] = ""
        cfg["pivot_root_nr"] = {"x86_64": 155, "aarch64": 41}.get(machine, -1)
    pid = os.fork()
    if pid == 0:
        init(cfg, feats, status_fd)
    os.close(status_fd)
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
