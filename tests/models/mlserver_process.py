"""Start a real MLServer serving the zoo's digits CNN (tests and benchmarks/bench_server.py).

:func:`start_mlserver` writes MLServer's settings and one model-settings file per
model (``{name: output}``: ``"logits"``, ``"probs"`` or ``"label"``) served by the
custom runtime ``oip_runtime.ZooRuntime``, and runs ``mlserver start`` in a
subprocess on free ports of 127.0.0.1 (gRPC on a free port too, metrics off,
inference in the server process: ``parallel_workers=0``). This module does not
import mlserver (about 4 s); only the server process does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MLServerProcess:
    """A running ``mlserver start``: ``url`` (the model's OIP URL), ``served()``, ``close()``."""

    def __init__(self, proc: subprocess.Popen, port: int, name: str, log: Path) -> None:
        self.proc, self.port, self.name, self.log = proc, port, name, log
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/v2/models/{name}"

    def url_of(self, name: str) -> str:
        return f"{self.base}/v2/models/{name}"

    def served(self, name: str | None = None) -> int:
        """Inputs the server's runtime answered for model ``name`` (default: the first)."""
        with urllib.request.urlopen(f"{self.base}/scrutiny/served", timeout=10) as r:
            return int(json.loads(r.read())[name or self.name])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_mlserver(folder: Path, models: dict[str, str] | None = None, *,
                   zoo: str = "digits-cnn", threads: int = 1, timeout: float = 60.0,
                   env: dict[str, str] | None = None) -> MLServerProcess:
    """Write MLServer's settings under ``folder`` and start it; returns when every model is ready."""
    folder = Path(folder)
    models = models or {"digits": "logits"}
    port = free_port()
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
                "metrics_endpoint": None, "parallel_workers": 0, "debug": False,
                "environments_dir": str(folder / ".envs"), "metrics_dir": str(folder / ".metrics")}
    (folder / "settings.json").write_text(json.dumps(settings))
    for name, output in models.items():
        model = {"name": name, "implementation": "oip_runtime.ZooRuntime",
                 "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
                 "outputs": [{"name": output, "datatype": "INT64" if output == "label" else "FP32",
                              "shape": [-1] if output == "label" else [-1, 10]}],
                 "parameters": {"extra": {"zoo": zoo, "output": output, "threads": threads}}}
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "model-settings.json").write_text(json.dumps(model))
    name = next(iter(models))
    here = str(Path(__file__).resolve().parent)
    penv = {**os.environ, **(env or {}),
            "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    log = folder / "mlserver.log"
    exe = Path(sys.executable).with_name("mlserver")
    proc = subprocess.Popen([str(exe), "start", str(folder)], cwd=folder, env=penv,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = MLServerProcess(proc, port, name, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlserver exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            for m in models:
                with urllib.request.urlopen(f"{server.url_of(m)}/ready", timeout=1) as r:
                    r.read()
            return server
        except OSError:
            time.sleep(0.1)
    server.close()
    raise RuntimeError(f"mlserver did not get ready in {timeout:g}s: {log.read_text()[-2000:]}")
