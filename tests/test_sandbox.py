# ruff: noqa: E501  (the attempts are one line of code each, kept whole for reading)
"""The python tool's escape suite: untrusted code tries to get out of the sandbox, and fails.

Every attempt runs as real code in the real sandbox (bubblewrap), with secrets planted where
an attacker would look: a canary in the parent's environment (an API key), in a model
directory, in a "home" file, in the server's SQLite and behind an HTTP server on loopback. An
attempt escapes if the canary shows up in anything that comes back (output, files), if a file
appears outside the work directory, or if its own check prints ESCAPED. None may; each limit
must come back to the model in words.
"""

import http.server
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from llmos.agent.sandbox import SandboxError, SandboxLimits, run_python, sandbox_mode

pytestmark = pytest.mark.skipif(not shutil.which("bwrap"), reason="bubblewrap not installed")

CANARY = "llmos-canary-5f3a9c"
LIMITS = SandboxLimits(cpu_s=2, wall_s=6, memory_mb=512, file_mb=4, processes=16)


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    """Paths and ports holding the canary, as an attacker who knows the layout would try."""
    d = tmp_path_factory.mktemp("host")
    (d / "model").mkdir()
    (d / "model" / "model.safetensors").write_text(CANARY)
    (d / "home").mkdir()
    (d / "home" / ".netrc").write_text(f"machine x password {CANARY}")
    db = sqlite3.connect(d / "store.sqlite")
    db.execute("create table t (x)")
    db.execute("insert into t values (?)", (CANARY,))
    db.commit()
    for p in [d, *d.rglob("*")]:  # readable by anyone on the host: only the sandbox stops it
        p.chmod(0o755 if p.is_dir() else 0o644)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(CANARY.encode())

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    old = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = CANARY  # the parent's secret
    yield {"dir": d, "port": server.server_address[1], "pid": os.getpid()}
    server.shutdown()
    if old is None:
        os.environ.pop("OPENAI_API_KEY")
    else:
        os.environ["OPENAI_API_KEY"] = old


# (name, code): {dir}, {port} and {pid} (this test process) are filled in. Code prints ESCAPED if its own check succeeds;
# reading the canary is caught whether or not it does.
ATTEMPTS = [
    ("read the model dir", "print(open('{dir}/model/model.safetensors').read())"),
    ("read a home file", "print(open('{dir}/home/.netrc').read())"),
    ("read ~ of the host", "import os; print(os.listdir('/root'))"),
    ("read /etc/shadow", "print(open('/etc/shadow').read())"),
    ("read /etc/passwd", "print(open('/etc/passwd').read())"),
    ("the server's SQLite", "import sqlite3; print(sqlite3.connect('{dir}/store.sqlite').execute('select * from t').fetchall())"),
    ("the environment", "import os; print(dict(os.environ))"),
    ("/proc/self/environ", "print(open('/proc/self/environ').read())"),
    ("/proc/1/environ", "print(open('/proc/1/environ').read())"),
    ("every /proc/*/environ", "import glob\nfor p in glob.glob('/proc/*/environ'):\n    try: print(open(p).read())\n    except OSError: pass"),
    ("/proc/1/root", "import os; print(os.listdir('/proc/1/root{dir}'))"),
    ("write outside the work dir", "open('{dir}/pwned', 'w').write('x')"),
    ("write to /usr", "open('/usr/pwned', 'w').write('x'); print('ESCAPED')"),
    ("walk up from the work dir", "import os; print(os.listdir('../..'), open('../../../{dir}/model/model.safetensors').read())"),
    ("HTTP to a loopback service", "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=3).read())"),
    ("TCP socket to loopback", "import socket; s = socket.create_connection(('127.0.0.1', {port}), 3); s.send(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(999))"),
    ("UDP to the outside", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('8.8.8.8', 53)); print('ESCAPED')"),
    ("DNS", "import socket; print(socket.getaddrinfo('pypi.org', 443)); print('ESCAPED')"),
    ("a unix socket of the host", "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/var/run/docker.sock'); print('ESCAPED')"),
    ("os.system", "import os; os.system('cat {dir}/model/model.safetensors; ls /root')"),
    ("subprocess with a shell", "import subprocess; print(subprocess.run('env; cat {dir}/home/.netrc', shell=True, capture_output=True, text=True))"),
    ("ctypes setuid(0)", "import ctypes; libc = ctypes.CDLL(None); print('ESCAPED' if libc.setuid(0) == 0 else 'refused')"),
    ("ctypes mount", "import ctypes; libc = ctypes.CDLL(None); r = libc.mount(b'{dir}', b'/tmp', None, 4096, None); print('ESCAPED' if r == 0 else 'refused')"),
    ("signal the parent", "import os, signal; os.kill(os.getppid(), signal.SIGKILL)"),
    ("kill everything", "import os, signal; os.kill(-1, signal.SIGKILL)"),
    ("a symlink brought back as a file", "import os; os.symlink('{dir}/model/model.safetensors', 'plot.png')"),
    ("a symlink to /proc/self/environ", "import os; os.symlink('/proc/self/environ', 'env.txt')"),
    ("a hard link to a host file", "import os; os.link('{dir}/model/model.safetensors', 'x.png'); print('ESCAPED')"),
    ("nested user namespace", "import os; os.system('unshare -r cat /etc/shadow') ; print(os.getuid())"),
    ("import the project", "import llmos; print('ESCAPED', llmos.__file__)"),
    ("chroot", "import os; os.chroot('/'); print('ESCAPED')"),
    ("ptrace the test process", "import ctypes; libc = ctypes.CDLL(None); r = libc.ptrace(16, {pid}, 0, 0); print('ESCAPED' if r == 0 else 'refused')"),
    ("signal the test process by pid", "import os; os.kill({pid}, 9); print('ESCAPED')"),
]  # fmt: skip


@pytest.mark.parametrize("name,code", ATTEMPTS, ids=[a[0] for a in ATTEMPTS])
def test_escape_attempt_fails(secrets, name, code):
    r = run_python(code.format(**secrets), LIMITS)
    everything = r.stdout + r.stderr + "".join(v.decode(errors="replace") for v in r.files.values())
    assert CANARY not in everything and "ESCAPED" not in r.stdout, r.for_model()
    assert not (secrets["dir"] / "pwned").exists()
    assert r.mode == "bubblewrap"


# (name, code, words the model must be told)
LIMIT_HITS = [
    ("infinite loop", "while True: pass", "CPU-time limit"),
    ("sleeping forever", "import time; time.sleep(1000)", "wall-clock limit"),
    ("memory bomb", "x = bytearray(10**10)", "memory limit"),
    ("fork bomb", "import os\nwhile True: os.fork()", "limit"),
    ("thread bomb", "import threading, time\nwhile True: threading.Thread(target=time.sleep, args=(100,)).start()", "limit"),
    ("a huge file", "open('big.bin', 'wb').write(b'x' * 50_000_000)", "file-size limit"),
    ("an output flood", "while True: print('y' * 1000)", "limit"),
]  # fmt: skip


@pytest.mark.parametrize("name,code,told", LIMIT_HITS, ids=[a[0] for a in LIMIT_HITS])
def test_limits_stop_the_code_and_say_so(name, code, told):
    r = run_python(code, LIMITS)
    assert r.limit and told in r.limit and told in r.for_model(), r.for_model()
    assert r.seconds < LIMITS.wall_s + 3
    assert len(r.stdout) <= LIMITS.output_chars + 100  # truncated, with a note


HAS_MATPLOTLIB = subprocess.run(["/usr/bin/python3", "-c", "import matplotlib"]).returncode == 0


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="Debian's python3-matplotlib not installed")
def test_a_plot_comes_back_as_an_attachment():
    code = (
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [2, 4, 3])\nplt.savefig('plot.png')"
    )
    r = run_python(code, LIMITS)
    assert r.limit is None and r.exit_code == 0, r.for_model()
    assert r.files["plot.png"].startswith(b"\x89PNG") and "plot.png" in r.for_model()


def test_the_parent_lives_and_no_sandbox_process_is_left():
    r = run_python(
        "import os, time\nfor _ in range(5):\n    if os.fork() == 0: time.sleep(60)", LIMITS
    )
    assert r.exit_code == 0
    os.kill(os.getpid(), 0)  # still here
    if os.getuid() == 0:  # the children ran as nobody: the end of the PID namespace took them
        deadline = time.time() + 3
        while _processes_of_nobody() and time.time() < deadline:
            time.sleep(0.1)
        assert not _processes_of_nobody()


def _processes_of_nobody() -> list[Path]:
    def owner(p: Path) -> int:
        try:
            return p.stat().st_uid
        except OSError:
            return -1

    return [p for p in Path("/proc").iterdir() if p.name.isdigit() and owner(p) == 65534]


def test_without_bubblewrap_code_does_not_run_unless_asked(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("LLMOS_SANDBOX", raising=False)
    with pytest.raises(SandboxError, match="bubblewrap"):
        run_python("print(1)")
    monkeypatch.setenv("LLMOS_SANDBOX", "weak")
    assert sandbox_mode() == "weak"
    r = run_python("print(6 * 7)", LIMITS)
    assert r.stdout == "42\n" and "weak" in r.for_model()


def test_signals_do_not_reach_the_test_process():
    before = signal.getsignal(signal.SIGTERM)
    run_python(
        "import os, signal\nfor pid in range(1, 5000):\n    try: os.kill(pid, signal.SIGTERM)\n    except OSError: pass",
        LIMITS,
    )
    assert signal.getsignal(signal.SIGTERM) == before  # and we are still running


def test_the_python_tool_in_a_tool_call():
    from llmos.agent.tools import AGENT_TOOLS, run_tool_call

    call = '{"name": "python", "arguments": {"code": "print(sum(range(10)))"}}'
    out = run_tool_call(call, AGENT_TOOLS)[1]
    assert "\n45\n" in out and out.startswith("[data from python")  # program output is data
    bad = '{"name": "python", "arguments": {"code": 5}}'
    assert "must be a non-empty string" in run_tool_call(bad, AGENT_TOOLS)[1]
