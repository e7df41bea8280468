"""Where an update's training runs (`train.executor`): every executor takes the spec the cycle wrote
and gives back a run with the local child's interface (daemon/update/launcher.py ChildRun):

    run = executor.start(spec_path, on_event, standby)   # progress events reach on_event as they come
    run.terminate()                                      # stop: the run checkpoints, wait() raises TrainingInterrupted
    run.wait()                                           # the results document, TrainingFailed or TrainingInterrupted
    executor.forget(batch)                               # a batch given up: what its runs left for a resume goes

`local`: the child process (torchrun for train.num_processes > 1), on this machine.
`ray`: a TorchTrainer on an existing Ray cluster (ray.py). `kubernetes`: an Indexed Job of torchrun
pods (kubernetes.py). Both remote ones run the same entry point (strategies/remote.py) and exchange
the spec, rows, champion, checkpoints, progress and candidate through the S3 artifact store
(strategies/runstore.py), so the gate and registry steps see exactly what a local run leaves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from daemon.config import Config

Event = Callable[[dict[str, Any]], None]


class Run(Protocol):
    warm: bool

    def terminate(self) -> None: ...

    def wait(self) -> dict[str, Any]: ...


class Executor(Protocol):
    name: str

    def start(self, spec_path: Path, on_event: Event | None, standby: Any = None) -> Run: ...

    def forget(self, batch: int) -> None: ...


def create(config: Config) -> Executor:
    """The executor train.executor names (the config check made sure its extra and store are there)."""
    if config.train.executor == "ray":
        from daemon.update.executors.ray import RayExecutor
        return RayExecutor(config)
    if config.train.executor == "kubernetes":
        from daemon.update.executors.kubernetes import KubernetesExecutor
        return KubernetesExecutor(config)
    from daemon.update.executors.local import LocalExecutor
    return LocalExecutor()
