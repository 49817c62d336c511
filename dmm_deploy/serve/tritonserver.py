"""Start and stop a local Triton Inference Server process.

The server binary and its Python backend come from the ``nvidia-pytriton`` wheel (the
``serve`` extra); only its files are used (not pytriton's own Python-side serving). The
Python backend's stub is built against one CPython minor version and links the system's
``libpython3.X``: the environment that runs the server must be made from that interpreter
(on Debian: ``/usr/bin/python3.11 -m venv``), see :func:`server_problem`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TritonServer", "TritonServerError", "find_server", "free_port", "server_problem"]


class TritonServerError(RuntimeError):
    """The server could not be found, started, or did not become ready."""


@dataclass(frozen=True)
class ServerFiles:
    """Where the wheel keeps the binary, its libraries, the Python backend and the stub."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


def find_server() -> ServerFiles:
    """Locate ``tritonserver`` in the installed ``nvidia-pytriton`` distribution."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError(
            "tritonserver not found: install the serve extra (pip install 'dmm-deploy[serve]', "
            "which brings nvidia-pytriton)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    dist = root / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    files = ServerFiles(
        binary=dist / "bin" / "tritonserver",
        libs=root.parent / "nvidia_pytriton.libs",
        python_backend=dist / "backends" / "python",
        stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for p in (files.binary, files.python_backend, files.stub):
        if not p.exists():
            raise TritonServerError(f"tritonserver files incomplete: {p} is missing")
    return files


def server_problem() -> str | None:
    """Why the local server cannot run this interpreter's Python backend, or None.

    The stub links the system ``libpython``; a virtual environment made from another build
    of the same minor version (e.g. pyenv's 3.11.7 beside Debian's 3.11.2) loads a standard
    library that does not match it and the backend fails when a model loads.
    """
    try:
        find_server()
    except TritonServerError as e:
        return str(e)
    base = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    system = Path(f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}")
    if not system.exists() or system.resolve() != base:
        return (
            f"the Python backend stub links the system libpython; this environment's interpreter "
            f"is {base}, not {system} (make the venv with {system} -m venv)"
        )
    return None


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TritonServer:
    """One ``tritonserver`` process over a model repository, on loopback by default.

    Use as a context manager (``with TritonServer(repo) as srv: ...``); ports default to free
    ones. ``log`` collects the server's output (a file in a temporary folder).
    """

    repository: Path
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    address: str = "127.0.0.1"
    startup_timeout: float = 120.0
    verbose: int = 0
    extra_args: list[str] = field(default_factory=list)
    last_log: str = ""
    _proc: subprocess.Popen | None = None
    _work: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{self.address}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path | None:
        return None if self._work is None else self._work / "tritonserver.log"

    def log_text(self) -> str:
        p = self.log_path
        return p.read_text(errors="replace") if p is not None and p.exists() else ""

    def _backends(self, files: ServerFiles) -> Path:
        """A backend folder with the Python backend and the stub for this interpreter."""
        assert self._work is not None
        py = self._work / "backends" / "python"
        py.mkdir(parents=True)
        for f in files.python_backend.iterdir():
            if f.is_file():
                (py / f.name).symlink_to(f)
        shutil.copy(files.stub, py / "triton_python_backend_stub")
        return py.parent

    def _environment(self, files: ServerFiles) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(files.libs)] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        # the stub runs `python` from PATH's first entry to find the environment
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def start(self) -> TritonServer:
        if self._proc is not None:
            raise TritonServerError("server already started")
        files = find_server()
        self.repository = Path(self.repository)
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository not found: {self.repository}")
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        self._work = Path(tempfile.mkdtemp(prefix="dmm-tritonserver-"))
        backends = self._backends(files)
        cmd = [
            str(files.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
            "--exit-timeout-secs=5",
            f"--log-verbose={self.verbose}",
            *self.extra_args,
        ]
        log = open(self._work / "tritonserver.log", "wb")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(files),
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise TritonServerError(
                    f"tritonserver exited with code {self._proc.returncode} while starting: "
                    f"{_last_error(self.log_text())}"
                )
            if self._ready():
                return
            time.sleep(0.25)
        raise TritonServerError(
            f"tritonserver not ready after {self.startup_timeout:.0f} s: "
            f"{_last_error(self.log_text())}"
        )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self) -> int:
        """Block until the server exits (e.g. on SIGINT/SIGTERM); its exit code."""
        assert self._proc is not None
        return self._proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._work is not None:
            with contextlib.suppress(OSError):
                self.last_log = self.log_text()
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _last_error(log: str) -> str:
    """The most telling line of a server log (the last error, else the last line)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E") or "error" in ln.lower()]
    pick = errors[-3:] if errors else lines[-1:]
    return " | ".join(pick) if pick else "(no output)"
