"""train.executor: the config's checks (extras, the S3 store), and the remote run's machinery (the
run's folder in a real SeaweedFS, the workers' entry point strategies/remote.py) driven by a plain
local process, so that progress, stop and resume, failures and the candidate reach the daemon as
from the local child. The engines themselves: tests/test_ray_executor.py, tests/test_k8s_job.py."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from daemon.config import parse
from daemon.update import executors
from daemon.update.executors.local import LocalExecutor
from daemon.update.cycle import UpdateCycle
from daemon.update.executors.remote import RemoteExecutor, RemoteRun
from daemon.update.launcher import TrainingFailed, TrainingInterrupted, spawn
from registry.errors import ConfigError, MissingExtra
from daemon.home import open_registry
from strategies.runstore import RunStore, run_url
from strategies.spec import Failure
from tests.conftest import open_home, write_config
from tests.servers import seaweedfs_server  # noqa: F401 (fixture)
from tests.test_child import edit, make_spec
from tests.test_cycle import configure, drop
from tests.test_learning import toy


@pytest.mark.parametrize("executor, module, extra", [("ray", "ray", "ray"), ("kubernetes", "kubernetes", "kubernetes")])
def test_a_remote_executor_without_its_extra_exits_2_naming_it(monkeypatch, executor: str, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    data = {"train": {"executor": executor, "ray": {"address": "head:6379"}, "kubernetes": {"image": "x"}},
            "registry": {"artifacts": "s3://bucket/prefix"}}
    with pytest.raises(MissingExtra, match=rf"install the extra with `pip install 'lifelong\[{extra}\]'`") as caught:
        parse(data)
    assert caught.value.exit_code == 2


def test_the_cli_refuses_a_remote_executor_without_s3_artifacts_with_exit_2(home_root: Path) -> None:
    from tests.conftest import write_config

    write_config(home_root, train={"executor": "ray", "ray": {"address": "head:6379"}})
    done = subprocess.run([sys.executable, "-m", "daemon.cli", "status", "--home", str(home_root)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "registry.artifacts" in done.stderr and "S3" in done.stderr, done.stderr


def test_local_is_the_default_and_needs_nothing_more() -> None:
    config = parse({})
    assert config.train.executor == "local" and isinstance(executors.create(config), LocalExecutor)
    with pytest.raises(ConfigError, match="^train.ray.address: required"):
        parse({"train": {"executor": "ray"}, "registry": {"artifacts": "s3://b/p"}})


class ProcessRun(RemoteRun):
    """The remote machinery with the simplest engine: the workers' entry point as one local process
    (what each pod's torchrun or each Ray worker runs)."""

    executor = "process"

    def launch(self) -> None:
        self.process = spawn(["-m", "strategies.remote", self.store.url], stdin=subprocess.DEVNULL)
        self.output: list[str] = []
        for stream in (self.process.stdout, self.process.stderr):
            threading.Thread(target=lambda s=stream: self.output.extend(s), daemon=True).start()

    def finish(self) -> tuple[str, str] | None:
        code = self.process.wait()
        return None if code == 0 else (Failure.EXCEPTION.value, f"exit {code}: {''.join(self.output)[-800:]}")

    def cancel(self) -> None:
        self.process.kill()


def remote_run(spec: Path, artifacts: str, events: list[dict]) -> ProcessRun:
    return ProcessRun(spec, artifacts, 1, events.append)


def test_a_remote_run_reports_progress_and_brings_the_candidate_back(
        tmp_path: Path, tiny_model: Path, seaweedfs_server) -> None:  # noqa: F811
    artifacts = seaweedfs_server.url()
    spec = make_spec(tmp_path, tiny_model, strategy="replay", epochs=2, champion=tiny_model, parent="v0001")
    events: list[dict[str, Any]] = []
    run = remote_run(spec, artifacts, events).start()
    results = run.wait()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "step" in kinds and "evaluating" in kinds and kinds[-1] == "done"
    assert set(results["scores"]) == {"candidate", "champion"} and results["train"]["epochs_run"] == 2
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file() and (tmp_path / "results.json").is_file()
    assert RunStore(run.store.url).keys() == []  # the run's folder is removed once the candidate is here


@pytest.mark.slow
def test_a_stopped_remote_run_checkpoints_in_the_store_and_the_next_attempt_resumes(
        tmp_path: Path, tiny_model: Path, seaweedfs_server) -> None:  # noqa: F811
    artifacts = seaweedfs_server.url()
    # long enough that the stop (polled every STOP_POLL_SECONDS) lands mid-run on an idle machine too
    spec = make_spec(tmp_path, tiny_model, strategy="finetune", epochs=30, rows=150)
    events: list[dict[str, Any]] = []
    stepped = threading.Event()
    run = ProcessRun(spec, artifacts, 1, lambda e: (events.append(e), e["event"] == "step" and stepped.set()))
    run.start()
    assert stepped.wait(120)
    run.terminate()
    with pytest.raises(TrainingInterrupted, match="checkpoint written"):
        run.wait()
    store = RunStore(run.store.url)
    assert store.get_json("checkpoint.json") is not None and not (tmp_path / "out").exists()
    stopped_at = int(events[-1]["message"].split("step ")[1].split(";")[0])
    again: list[dict[str, Any]] = []
    results = remote_run(spec, artifacts, again).start().wait()
    assert next(e for e in again if e["event"] == "resumed")["step"] == stopped_at
    assert results["train"]["epochs_run"] == 30


def test_a_failed_remote_run_is_a_training_failure_with_its_kind(
        tmp_path: Path, tiny_model: Path, seaweedfs_server) -> None:  # noqa: F811
    spec = make_spec(tmp_path, tiny_model, strategy="finetune", epochs=1)
    edit(spec, labels=["only"], old_label_count=0)  # the rows' labels are not among the spec's
    with pytest.raises(TrainingFailed) as caught:
        remote_run(spec, seaweedfs_server.url(), []).start().wait()
    assert caught.value.kind == Failure.INVALID_SPEC.value and "not in labels" in str(caught.value)
    assert not (tmp_path / "out").exists()


class ProcessExecutor(RemoteExecutor):
    name = "process"

    def start(self, spec_path: Path, on_event: Any = None, standby: Any = None) -> ProcessRun:
        return ProcessRun(spec_path, self.config.registry.artifacts, 1, on_event).start()  # type: ignore[return-value]


def test_a_batch_given_up_leaves_nothing_of_its_runs_in_the_store(
        home_root: Path, tiny_model: Path, seaweedfs_server) -> None:  # noqa: F811
    artifacts = seaweedfs_server.url()
    configure(home_root, tiny_model)
    # cuda:99: the workers fail when they move the model there, after the run's inputs were staged
    write_config(home_root, schedule={"max_attempts": 1}, train={"device": "cuda:99"}, registry={"artifacts": artifacts})
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 60, seed=1))
    home = open_home(home_root)
    with open_registry(home) as registry:
        outcome = UpdateCycle(home, registry, executor=ProcessExecutor(home.config)).run()
    assert (outcome.decision, outcome.gave_up) == ("failed", True) and "cuda" in outcome.reasons[0].lower(), outcome
    assert RunStore(run_url(artifacts, 1)).keys() == []  # never resumed: its inputs and checkpoint went with it
