"""`train.executor = "ray"`: each update's training as a Ray Train TorchTrainer on an existing
cluster ([train.ray] address, num_workers, use_gpu, resources_per_worker).

The daemon starts a driver process (strategies/ray_driver.py: Ray is never imported here) that
connects to the cluster and submits the trainer; progress, the stop request, the checkpoint and the
candidate go through the run's folder in the S3 store (remote.py). A stop that the workers do not
answer within remote.STOP_GRACE seconds ends the driver, and with it the job's workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from daemon.config import Config
from daemon.update.executors.remote import RemoteExecutor, RemoteRun
from daemon.update.launcher import TrainingFailed, spawn
from strategies.spec import Failure

CONNECT_TIMEOUT = 5.0
EXIT_UNREACHABLE = 3  # strategies/ray_driver.py


def endpoint(address: str) -> tuple[str, int]:
    """host and port of "ray://host:10001" or "host:6379"."""
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    default = 10001 if parts.scheme == "ray" else 6379
    return parts.hostname or "127.0.0.1", parts.port or default


def reachable(address: str) -> str | None:
    """Why the cluster cannot be reached (a TCP connect to its address), or None."""
    host, port = endpoint(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return None
    except OSError as exc:
        return f"cannot reach the Ray cluster at train.ray.address {address!r}: {exc}"


class RayExecutor(RemoteExecutor):
    name = "ray"

    def start(self, spec_path: Path, on_event: Any = None, standby: Any = None) -> "RayRun":
        return RayRun(spec_path, self.config, on_event).start()


class RayRun(RemoteRun):
    executor = "ray"

    def __init__(self, spec_path: Path, config: Config, on_event: Any = None) -> None:
        self.ray = config.train.ray
        super().__init__(spec_path, config.registry.artifacts, self.ray.num_workers, on_event)
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self) -> "RayRun":
        problem = reachable(self.ray.address)  # before staging anything: nothing is started or written
        if problem:
            raise TrainingFailed(Failure.EXCEPTION.value, problem)
        super().start()
        return self

    def launch(self) -> None:
        args = ["-m", "strategies.ray_driver", self.store.url, "--address", self.ray.address,
                "--num-workers", str(self.ray.num_workers), "--resources", json.dumps(self.ray.resources_per_worker)]
        if self.ray.use_gpu:
            args.append("--use-gpu")
        self.process = spawn(args, stdin=subprocess.DEVNULL)
        for stream in (self.process.stdout, self.process.stderr):
            threading.Thread(target=lambda s=stream: self.output.extend(s), daemon=True).start()

    def finish(self) -> tuple[str, str] | None:
        if self.process is None:
            return Failure.EXCEPTION.value, "the Ray driver was never started"
        code = self.process.wait()
        tail = "".join(self.output)[-1500:].strip()
        if code == 0:
            return None
        if code == EXIT_UNREACHABLE:
            return Failure.EXCEPTION.value, tail
        if code < 0:
            return Failure.KILLED.value, f"the Ray driver was killed by signal {-code}"
        return Failure.EXCEPTION.value, f"the Ray driver exited {code}: {tail}"

    def cancel(self) -> None:
        """End the driver: Ray ends a job's workers with its driver."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
