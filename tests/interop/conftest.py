"""Fixtures shared by the interop tests: a cellgate binary, a running
`cellgate serve` on a free loopback port with a throwaway data directory, and
the npm tools installed by scripts/tools.

Environment (set by scripts/test):
  CELLGATE_BIN        the cellgate executable under test
  CELLGATE_TOOLS_DIR  where scripts/tools put Node and the npm peers
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

TOOLS = Path(os.environ.get("CELLGATE_TOOLS_DIR", Path.home() / ".cache/cellgate-tools"))
NODE_BIN = TOOLS / "npm/node_modules/.bin"


def cellgate_bin() -> str:
    path = os.environ.get("CELLGATE_BIN")
    if not path or not Path(path).is_file():
        pytest.fail(f"CELLGATE_BIN must name the cellgate binary (got {path!r}); run scripts/test")
    return path


def node_env() -> dict:
    """The environment for npm tools: Node 22 first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{NODE_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `cellgate serve` child process."""

    def __init__(self, *extra: str, config: str | None = None, port: int | None = None,
                 data_dir: Path | None = None, tls_context=None):
        self.tls_context = tls_context
        self.dir = Path(tempfile.mkdtemp(prefix="cellgate-interop-"))
        self.port = port or free_port()
        data = data_dir or self.dir / "data"
        args = [cellgate_bin(), "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(data)]
        if config is not None:
            path = self.dir / "cellgate.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        args += list(extra)
        self.log = open(self.dir / "serve.log", "w+")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        self._wait_ready()

    @property
    def base(self) -> str:
        scheme = "https" if self.tls_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def _wait_ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cellgate exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=1, context=self.tls_context) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"cellgate did not become ready:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_server():
    server = Server("--demo")
    yield server
    server.stop()


@pytest.fixture()
def data_dir():
    d = Path(tempfile.mkdtemp(prefix="cellgate-interop-data-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
