"""Run folders: the one check every command that writes a run folder (`r1kit zero`, `r1kit pipeline`) makes first."""
from __future__ import annotations

import os
from pathlib import Path

from r1kit.errors import R1kitError


def prepare_run_dir(path: str | os.PathLike, resume: bool) -> Path:
    """Create the run folder `path` (parents included) and return it, or raise a one-line R1kitError.

    resume=False refuses a folder that already holds files (a new run must not mix with an old one's checkpoints
    and metrics); resume=True continues whatever is there. Checked before any work starts, so a typo in the path
    costs nothing (an unwritable place such as /proc/x, or a parent that is a file)."""
    run = Path(path)
    if run.exists() and not run.is_dir():
        raise R1kitError(f"{run}: exists and is not a folder; choose another run folder")
    if run.is_dir() and not resume and any(run.iterdir()):
        raise R1kitError(f"{run}: run folder exists and is not empty; pass --resume to continue it or choose "
                         f"another --run-dir")
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise R1kitError(f"{run}: cannot create the run folder ({e.strerror or e})") from None
    return run
