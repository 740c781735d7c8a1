"""The python tool's sandbox: code the model wrote runs in a process that sees almost nothing.

Layers, from the outside in (each one alone would stop most of the escape suite,
tests/test_sandbox.py; together they stop all of it):

1. **An unprivileged user.** Started by root, the child first becomes `nobody` (uid 65534),
   so the kernel's own permission checks apply (root's 0600 files stay closed) and the process
   limit counts only sandbox processes (Linux never enforces RLIMIT_NPROC on root).
2. **Resource limits** (setrlimit, before exec): CPU seconds, address space, file size (the
   captured output is a file too, so a flood of prints ends there), processes, no core dumps;
   and a wall-clock timeout that kills the whole process group.
3. **bubblewrap** (`bwrap`, Debian's; unprivileged user namespaces): new network (no
   interfaces but a down loopback: no sockets to anywhere, not even this machine's llmos
   server), PID, IPC and UTS namespaces; a file system built from nothing with only /usr
   (read-only), a few files of /etc the interpreter needs, a private /tmp, /proc of its own
   PID namespace, and the work directory; no home, no model files, no project. The
   environment is emptied (no API keys) and the interpreter is the system's `python3 -I`
   (Debian's numpy and matplotlib inside), never the project's venv.

Files the code leaves in its work directory (a PNG plot, a CSV) come back as attachments:
regular files only, read without following symlinks, so a link to /etc/shadow planted inside
brings nothing out. Where bwrap is missing, code does not run unless the user opts into the
weaker mode (`LLMOS_SANDBOX=weak`: layers 1 and 2 only), and every result says which is active.

    >>> # r = run_python("print(2 ** 10)"); r.stdout == "1024\\n"; r.limit is None
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmos.common import LlmosError

NOBODY = 65534
PYTHON = "/usr/bin/python3"  # the system's interpreter: nothing of the project's venv inside
ETC = ["ld.so.cache", "fonts", "matplotlibrc", "alternatives", "localtime", "mime.types"]


class SandboxError(LlmosError):
    """The sandbox cannot run code here (no bubblewrap and no opt-in, no interpreter)."""


@dataclass
class SandboxLimits:
    cpu_s: int = 10  # CPU seconds (SIGXCPU)
    wall_s: float = 20.0  # wall clock, then the process group is killed
    memory_mb: int = 1024  # address space of each process
    file_mb: int = 16  # largest file written, the captured output included
    processes: int = 16  # processes and threads of the sandbox user at once
    output_chars: int = 4000  # of stdout and of stderr, each, shown to the model
    attachment_mb: int = 8  # largest file brought back from the work directory


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int
    mode: str  # "bubblewrap" or "weak"
    limit: str | None = None  # which limit ended the run, said plainly
    files: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0

    def for_model(self) -> str:
        """The tool message: output, what was hit, the files produced."""
        parts = [f"[sandbox: {self.mode}; exit code {self.exit_code}; {self.seconds:.1f} s]"]
        if self.limit:
            parts.append(f"[stopped: {self.limit}]")
        if self.stdout:
            parts.append(self.stdout)
        if self.stderr:
            parts.append(f"stderr:\n{self.stderr}")
        if self.files:
            parts.append(
                "files: " + ", ".join(f"{k} ({len(v):,} bytes)" for k, v in self.files.items())
            )
        return "\n".join(parts)


def sandbox_mode() -> str:
    """ "bubblewrap" where it is installed; "weak" only if the user opted in; else an error."""
    if shutil.which("bwrap"):
        return "bubblewrap"
    if os.environ.get("LLMOS_SANDBOX") == "weak":
        return "weak"
    raise SandboxError(
        "the python tool needs bubblewrap (apt install bubblewrap); LLMOS_SANDBOX=weak runs "
        "code without file-system and network isolation (resource limits only)"
    )


def run_python(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `code` as a script in a fresh sandbox; see the module docstring."""
    limits = limits or SandboxLimits()
    mode = sandbox_mode()
    if not Path(PYTHON).exists():
        raise SandboxError(f"{PYTHON} is missing: the sandbox runs the system's Python 3")
    host = Path(tempfile.mkdtemp(prefix="llmos-py-"))  # out.txt, err.txt: not visible inside
    work = host / "work"
    work.mkdir()
    (work / "main.py").write_text(code)
    if os.getuid() == 0:  # the sandbox user must reach (not list) host/ and own work/
        os.chmod(host, 0o711)
        for p in (work, work / "main.py"):
            os.chown(p, NOBODY, NOBODY)
    try:
        with open(host / "out.txt", "wb") as out, open(host / "err.txt", "wb") as err:
            start = time.monotonic()
            proc = subprocess.Popen(
                _command(mode, work),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=work,
                env=_environment(),
                start_new_session=True,  # its own process group: the timeout kills them all
                preexec_fn=lambda: _drop_privileges(limits),
            )
            try:
                code_ = proc.wait(timeout=limits.wall_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code_, timed_out = proc.wait(), True
            seconds = time.monotonic() - start
        stdout = _read(host / "out.txt", limits.output_chars)
        stderr = _read(host / "err.txt", limits.output_chars)
        limit = _which_limit(code_, timed_out, stderr, limits)
        files = _attachments(work, limits.attachment_mb << 20)
        return SandboxResult(stdout, stderr, code_, mode, limit, files, seconds)
    finally:
        shutil.rmtree(host, ignore_errors=True)  # rmtree never follows symlinks


def _command(mode: str, work: Path) -> list[str]:
    run = [PYTHON, "-I", "main.py"]
    if mode == "weak":
        return run
    cmd = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"]
    cmd += ["--new-session", "--cap-drop", "ALL"]
    cmd += ["--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for link in ("bin", "lib", "lib64", "sbin"):  # Debian's merged /usr
        if os.path.islink(f"/{link}"):
            cmd += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
    for name in ETC:
        cmd += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    cmd += ["--bind", str(work), "/work", "--chdir", "/work"]
    return cmd + run


def _environment() -> dict[str, str]:
    """A new, minimal environment: nothing of the parent's (API keys, tokens) gets in."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": "/work",
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",  # plots go to files, there is no screen
        "MPLCONFIGDIR": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _drop_privileges(limits: SandboxLimits) -> None:
    """In the child, before exec: limits first (as root we may set any), then become nobody."""
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    uid = NOBODY if os.getuid() == 0 else os.getuid()
    # RLIMIT_NPROC counts every process of the user: allow what it runs already, plus ours.
    resource.setrlimit(resource.RLIMIT_NPROC, (_processes_of(uid) + limits.processes,) * 2)
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def _processes_of(uid: int) -> int:
    n = 0
    for d in os.listdir("/proc"):
        try:
            n += d.isdigit() and os.stat(f"/proc/{d}").st_uid == uid
        except OSError:
            pass
    return n


def _which_limit(code: int, timed_out: bool, stderr: str, limits: SandboxLimits) -> str | None:
    """The limit that ended the run, in words the model can act on."""
    # A signal shows as -N from Popen, or as 128 + N through bwrap.
    sig = -code if code < 0 else code - 128 if code > 128 else 0
    if timed_out:
        return f"wall-clock limit of {limits.wall_s:g} s reached; the process was killed"
    if sig == signal.SIGXCPU:
        return f"CPU-time limit of {limits.cpu_s} s reached"
    if sig == signal.SIGXFSZ or "File too large" in stderr:  # Python ignores SIGXFSZ
        return f"file-size limit of {limits.file_mb} MB reached (output or a file too large)"
    if "MemoryError" in stderr or sig == signal.SIGKILL:
        return f"memory limit of {limits.memory_mb} MB reached"
    if "Resource temporarily unavailable" in stderr or "can't start new thread" in stderr:
        return f"process limit of {limits.processes} reached"
    return None


def _read(path: Path, chars: int) -> str:
    with open(path, "rb") as f:
        data = f.read(chars * 4 + 4)
    text = data.decode("utf-8", errors="replace")
    if len(text) > chars or path.stat().st_size > len(data):
        size = path.stat().st_size
        return text[:chars] + f"\n[... truncated: {size:,} bytes in all]"
    return text


def _attachments(work: Path, max_bytes: int) -> dict[str, bytes]:
    """Regular files the code left in its work directory (not main.py), opened without
    following a symlink at any point."""
    files = {}
    for entry in os.scandir(work):
        if entry.name == "main.py" or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_size <= max_bytes:
                files[entry.name] = f.read()
    return files
