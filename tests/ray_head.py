"""A real Ray head node in a subprocess, with token auth on, for tests of the Jobs API.

`ray start --head --block` on 127.0.0.1 with every port it opens chosen free and its own short temp dir,
so it clashes with no other Ray cluster on the machine. It is stopped by killing its session:
never `ray stop`, which kills every Ray process on the machine (other tests' and users' clusters too).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.processes import kill_session

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class Head:
    address: str  # the dashboard / Jobs API, http://127.0.0.1:PORT
    token: str = field(repr=False)  # kept out of test failure output too
    process: subprocess.Popen
    temp_dir: str

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # Ray's workers are in process groups of their own, all in the head's session: none may be left,
        # and only once all are gone may the temp dir go (a dying raylet could still write into it).
        kill_session(self.process.pid)
        self.process.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def free_port(avoid: range = range(0)) -> int:
    """A port nothing listens on now, outside `avoid` (the range kept for Ray's workers)."""
    while True:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def start_head(token: str, num_cpus: int = 2, timeout_s: float = 120.0) -> Head:
    # Unix socket paths have a ~107-character limit, so the temp dir is short and in /tmp.
    temp_dir = tempfile.mkdtemp(prefix="hr-", dir="/tmp")
    low = random.randrange(30000, 60000, 200)
    workers = range(low, low + 200)
    named = ["--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port"]
    named += ["--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
    named += ["--node-manager-port", "--object-manager-port"]
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(named):
        ports = {flag: free_port(avoid=workers) for flag in named}
    ports |= {"--min-worker-port": workers[0], "--max-worker-port": workers[-1]}
    dashboard = ports["--dashboard-port"]
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1"]
    cmd += [f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats", "--include-dashboard=true"]
    cmd += [f"{flag}={port}" for flag, port in ports.items()]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "DS_ACCELERATOR": "cpu"}
    # Jobs run `hone ...`: on a real cluster it is installed on every node; here it is this venv's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    log = open(Path(temp_dir) / "head.log", "w")  # noqa: SIM115 - lives as long as the head
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(f"http://127.0.0.1:{dashboard}", token, process, temp_dir)
    _wait_until_serving(head, timeout_s)
    return head


def _wait_until_serving(head: Head, timeout_s: float) -> None:
    """The Jobs API answers only once the dashboard and its job module are up."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {head.token}"}
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            log = (Path(head.temp_dir) / "head.log").read_text()
            head.stop()
            raise RuntimeError(f"ray start exited with {head.process.returncode}:\n{log[-3000:]}")
        try:
            if requests.get(f"{head.address}/api/jobs/", headers=headers, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    head.stop()
    raise RuntimeError(f"the Ray head at {head.address} did not serve the Jobs API within {timeout_s:g} s")
