"""Start and stop a real `bentoml serve` process on 127.0.0.1 (CLI `serve`, tests, benchmarks, the demo).

    with ServerProcess("churnsense:latest") as server:     # a built Bento, or "serving.service:ChurnSense"
        httpx.post(f"{server.url}/sentiment", json={"texts": ["great"]})

The server runs in its own process group, so stopping it also stops its workers. Its log goes to a file (nothing
a customer wrote is in it unless CHURNSENSE_LOG_TEXT=true).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from churnsense.environment import SERVER, set_defaults
from churnsense.errors import UserError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_TARGET = "serving.service:ChurnSense"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# `bentoml serve ...` with a Prometheus directory of its own (the first argument). `bentoml serve` empties
# `$BENTOML_HOME/prometheus_multiproc_dir` as it starts and its workers count there, so a second server on the
# same store (this suite's servers, a blue/green pair) wiped the files the first one's workers counted in: the
# first server's /metrics stopped moving, silently. The directory is set as BentoML's own pytest plugin sets it.
# Run with -c, importing nothing of churnsense: the server imports the Bento's own `serving` package, which a
# launcher module of this one would shadow (an older Bento then ran with this checkout's `serving`). The command
# line still reads `... bentoml serve <target> ...` for whoever looks for it.
_LAUNCH = (
    "import sys\n"
    "from bentoml._internal.configuration.containers import BentoMLContainer\n"
    "from bentoml_cli.cli import cli\n"
    "BentoMLContainer.prometheus_multiproc_dir.set(sys.argv[1])\n"
    "cli(args=sys.argv[3:], prog_name=sys.argv[2])\n"
)


def metrics_dir_for(env: Mapping[str, str]) -> Path:
    """A new, empty Prometheus directory for one server, in its BentoML store beside BentoML's own (not in /tmp,
    where cleaners would delete a long-running server's live files); its server removes it when it stops."""
    home = Path(env.get("BENTOML_HOME") or Path.home() / "bentoml")
    parent = home / "churnsense_metrics"
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="server-", dir=parent))


def serve_command(
    target: str, host: str, port: int, working_dir: Path | None = None, metrics_dir: Path | None = None
) -> list[str]:
    """The `bentoml serve` command line for a Bento tag, or a `module:Class` importable from `working_dir`;
    with `metrics_dir`, the server counts its Prometheus series there, not in the store's shared directory that
    the next server to start would empty."""
    launcher = ["-c", _LAUNCH, str(metrics_dir), "bentoml"] if metrics_dir is not None else ["-m", "bentoml"]
    command = [sys.executable, *launcher, "serve", target, "--host", host, "--port", str(port)]
    if working_dir is None and target == SOURCE_TARGET:
        working_dir = REPO_ROOT
    if working_dir is not None:
        command += ["--working-dir", str(working_dir)]
    return command


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, telemetry off and thread limits set (unless already set), plus `extra`;
    BENTOML_HOME made absolute."""
    env = dict(os.environ)
    set_defaults(SERVER, environ=env)
    env.update(extra or {})
    # `bentoml serve <bento>` runs in the Bento's own folder: a relative store path would point elsewhere.
    if env.get("BENTOML_HOME"):
        env["BENTOML_HOME"] = str(Path(env["BENTOML_HOME"]).resolve())
    return env


class ServerProcess:
    """A `bentoml serve` child process: `start()` waits until `/readyz` answers, `stop()` ends its group."""

    def __init__(
        self,
        target: str = SOURCE_TARGET,
        *,
        host: str = DEFAULT_HOST,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        working_dir: Path | None = None,
    ) -> None:
        self.target = target
        self.working_dir = working_dir
        self.host = host
        self.port = port
        self.env = dict(env or {})
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_dir: Path | None = None  # this server's own Prometheus directory, removed by `stop`

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, ready_timeout_s: float = 180.0) -> ServerProcess:
        """Start the server and block until `/readyz` is 200; raise with the log's tail if it dies or stalls."""
        import httpx

        self.port = self.port or free_port(self.host)
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="churnsense-serve-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        env = server_env(self.env)
        self.metrics_dir = metrics_dir_for(env)
        try:  # a server that does not come up is stopped, and its metrics directory removed
            command = serve_command(self.target, self.host, self.port, self.working_dir, self.metrics_dir)
            logger.info("starting bentoml serve %s on %s (log: %s)", self.target, self.url, self.log_path)
            with open(self.log_path, "wb") as log:  # the child keeps its own handle for its whole life
                self.process = subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            deadline = time.monotonic() + ready_timeout_s
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise UserError(
                        f"the server exited with code {self.process.returncode}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                        return self
                time.sleep(0.25)
            raise UserError(f"the server was not ready after {ready_timeout_s:.0f}s:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the server's process group (it and its workers), SIGKILL if it lingers."""
        try:
            if self.process is None or self.process.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout_s)
        finally:
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
                self.metrics_dir = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def latest_bento_tag(name: str = "churnsense") -> str:
    """The newest built Bento of that name; `UserError` when there is none."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return str(bentoml.get(f"{name}:latest").tag)
    except NotFound:
        raise UserError(f"no {name} Bento in the BentoML store; run `churnsense build` first") from None


FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_GRACE_S = 30.0


def serve_foreground(target: str | None, host: str, port: int) -> int:
    """CLI body of `churnsense serve`: run `bentoml serve` until it exits or this process is told to stop.

    The server runs in its own process group. SIGTERM, SIGINT (Ctrl-C) and SIGHUP sent to this wrapper are passed
    on to that whole group (the arbiter and its workers), and the wrapper waits for it; a group still alive after
    `STOP_GRACE_S` is killed. So a supervisor, `docker stop` or a test stopping `churnsense serve` never leaves a
    server holding the port. If the wrapper itself is killed with SIGKILL, the server is told by the kernel
    (parent-death signal). Returns the server's exit code.
    """
    target = target or latest_bento_tag()
    env = server_env()
    metrics_dir = metrics_dir_for(env)
    try:
        command = serve_command(target, host, port, metrics_dir=metrics_dir)
        return _serve_until_stopped(command, env, target, host, port)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_until_stopped(command: list[str], env: dict[str, str], target: str, host: str, port: int) -> int:
    logger.info("serving %s on http://%s:%d (docs at /, health at /readyz)", target, host, port)
    child = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        while True:
            try:
                code = child.wait(timeout=STOP_GRACE_S if stopping else None)
                break
            except subprocess.TimeoutExpired:
                logger.warning("the server did not stop within %.0fs of the signal; killing it", STOP_GRACE_S)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(
                child.pid, signal.SIGKILL
            )  # anything of the group still left (workers of a dead arbiter)
    return 130 if stopping and stopping[0] == signal.SIGINT else code


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the wrapper dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
