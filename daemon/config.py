"""lifelong.toml: typed, validated config with `LIFELONG_<SECTION>__<KEY>` env overrides.

Every section is a frozen, keyword-only pydantic model that refuses unknown keys; any error is
raised as `ConfigError` naming the dotted key (or the env var it came from).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from daemon.configbase import Duration, Section
from daemon.envconfig import env_overrides, merge
from daemon.strategyconfig import AVALANCHE_PARTS, StrategyConfig
from registry.errors import ConfigError
from strategies.tasks import TASKS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _fill(given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`given` with the keys of `defaults` it leaves out. A section of defaults (`{"replay": {"ratio",
    "budget"}}`) is one setting, measured together: it fills a given section that names none of its
    keys, and a section that names any of them keeps the built-in defaults for the rest."""
    filled = dict(given)
    for key, value in defaults.items():
        if isinstance(value, Mapping):
            mine = filled.get(key, {})
            if isinstance(mine, Mapping) and not set(mine) & set(value):
                filled[key] = {**value, **mine}
        elif key not in filled:
            filled[key] = value
    return filled


class ModelConfig(Section):
    task: str = "sequence_classification"  # one home holds one task (strategies/tasks TASKS)
    base: str = Field(default="embedded:minilm", min_length=1)
    max_length: int = Field(default=128, ge=8, le=8192)

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in TASKS:
            raise ValueError(f"{task!r} is not a task; known: {', '.join(TASKS)}")
        return task

    @field_validator("base")
    @classmethod
    def _extra_installed(cls, base: str) -> str:
        from strategies.embedded import check_installed

        check_installed(base)  # MissingExtra (exit 2) for embedded:smollm2 without lifelong[llm]
        return base


class InboxConfig(Section):
    path: str = Field(default="inbox", min_length=1)
    settle_seconds: Duration = 2.0
    eval_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    on_bad_rows: Literal["reject", "skip"] = "reject"
    max_file_bytes: int = Field(default=1 << 30, gt=0)
    labels: list[str | int] = Field(default_factory=list)
    polling: bool = False
    rescan_seconds: Duration = 30.0
    # caps on hostile input: each is an invalid-row reason past its bound
    max_row_bytes: int = Field(default=1 << 20, gt=0)
    max_text_chars: int = Field(default=100_000, gt=0)
    max_labels: int = Field(default=1000, ge=2)
    max_label_chars: int = Field(default=200, gt=0)

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str | int]) -> list[str | int]:
        names = [str(label) for label in labels]
        if len(set(names)) != len(names):
            raise ValueError("labels must be unique")
        if any(not name.strip() for name in names):
            raise ValueError("labels must be non-empty")
        return labels

    @field_validator("rescan_seconds")
    @classmethod
    def _positive_rescan(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value


class ScheduleConfig(Section):
    interval: Duration = 900.0
    cron: str = ""
    min_new_rows: int = Field(default=100, ge=0)
    max_wait: Duration = 86400.0
    # an update failing this many times in a row is recorded failed for good; later batches go on
    max_attempts: int = Field(default=3, ge=1)

    @field_validator("cron")
    @classmethod
    def _cron_fields(cls, value: str) -> str:
        if value and len(value.split()) != 5:
            raise ValueError("cron must have 5 fields (minute hour day month weekday)")
        return value


class RayConfig(Section):
    # an existing cluster: "ray://host:10001" (Ray Client) or "host:6379" (the head's GCS); nothing is started
    address: str = ""
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=dict)  # e.g. {CPU = 4, GPU = 1}


class KubernetesConfig(Section):
    namespace: str = "lifelong"
    image: str = ""  # the lifelong image with the extras the workers need (lifelong[remote])
    nodes: int = Field(default=2, ge=1)  # pods of the Indexed Job, one torchrun node each
    gpus_per_node: int = Field(default=0, ge=0)  # nvidia.com/gpu requested per pod, one rank per GPU (0: one CPU rank)
    service_account: str = "lifelong-train"  # the training pods' (they need no API rights)
    cpu: str = "2"  # each pod's CPU and memory requests (also its limits)
    memory: str = "8Gi"


EXECUTOR_EXTRAS = {"ray": ("ray", "ray[train]"), "kubernetes": ("kubernetes", "kubernetes")}


class TrainConfig(Section):
    # where each update trains: "local" (a child process, or torchrun on this machine), "ray" (an existing
    # Ray cluster, [train.ray]) or "kubernetes" (an Indexed Job of torchrun pods, [train.kubernetes])
    executor: Literal["local", "ray", "kubernetes"] = "local"
    ray: RayConfig = Field(default_factory=RayConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    num_processes: int = Field(default=1, ge=1)
    seed: int = Field(default=0, ge=0)
    standby_seconds: float = Field(default=300.0, ge=0.0)  # a warm training child; see the template

    @field_validator("precision", mode="before")
    @classmethod
    def _no_fp16(cls, value: Any) -> Any:
        # fp16 needs loss scaling (a GradScaler) that the loop does not do: refused rather than ignored
        if value == "fp16":
            raise ValueError("fp16 is not supported (it needs loss scaling); use \"bf16\" (or \"auto\": bf16 on CUDA)")
        return value


class GateConfig(Section):
    # one of the task's held-out metrics (checked against model.task); "" or unset in a whole config is
    # the task's own (Config fills it in: accuracy, entity_f1, ...)
    metric: str = "accuracy"
    min_gain_new: float = 0.0
    max_forgetting: float = Field(default=0.02, ge=0.0)
    min_eval_rows: int = Field(default=100, ge=0)  # 30 was too coarse; see the template
    canary: str = ""
    max_canary_drop: float = Field(default=0.0, ge=0.0)


class RegistryConfig(Section):
    # versions whose weights are kept (the champion and its rollback history first); older ones
    # keep their metadata, scores and audit
    keep_versions: int = Field(default=20, ge=1)
    # an update that would leave less than this free on the home's file system is skipped
    min_free_bytes: int = Field(default=2 << 30, ge=0)
    # "" = SQLite and files in the home; "postgresql://user@host/db", "s3://bucket/prefix" (lifelong[remote])
    metadata: str = ""
    artifacts: str = ""

    @field_validator("metadata", "artifacts")
    @classmethod
    def _backend_url(cls, url: str, info: Any) -> str:
        from registry.backends import check_url

        check_url(f"registry.{info.field_name}", url)  # MissingExtra (exit 2) passes through as itself
        return url


class MetricsConfig(Section):
    bind: str = Field(default="127.0.0.1:9717", pattern=r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]*):\d{1,5}$")

    @field_validator("bind")
    @classmethod
    def _port_range(cls, value: str) -> str:
        port = int(value.rsplit(":", 1)[1])
        if not 0 <= port <= 65535:
            raise ValueError("port must be 0-65535")
        return value

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.bind.rsplit(":", 1)
        return host.strip("[]") or "0.0.0.0", int(port)


class HooksConfig(Section):
    on_champion_change: str = ""


class FailoverConfig(Section):
    # "" = the row store, archive and quarantine live in the home; a folder on a volume that every
    # daemon of an active/standby group mounts at this same path (as the inbox) keeps them there, so
    # the daemon that takes over trains on every row the dead one took in (docs/operations.md)
    state: str = ""


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    inbox: InboxConfig = Field(default_factory=InboxConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    failover: FailoverConfig = Field(default_factory=FailoverConfig)

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """What a home of any task works with unnamed (TASKS): `gate.metric` "" or unset is the task's
        own (the first of its metrics), `strategy.name` "" or unset the task's own strategy,
        `gate.max_forgetting` unset the metric's own tolerance (in nats for answer_loss), and the
        strategy settings the task sets (`training`: for token_classification min_steps 0, and replay
        ratio 0.5 with budget "shared" as one setting) where unset. A named metric is checked against the task in `parse`."""
        if not isinstance(data, Mapping):
            return data
        model, gate, strategy = data.get("model", {}), data.get("gate", {}), data.get("strategy", {})
        if isinstance(model, ModelConfig):
            task = model.task
        else:
            task = model.get("task", ModelConfig().task) if isinstance(model, Mapping) else None
        if not isinstance(task, str) or task not in TASKS:
            return data  # an unknown task or a malformed section is refused by the fields' own checks
        info = TASKS[task]
        if isinstance(gate, Mapping):
            metric = gate.get("metric", "") or info.default_metric
            gate = {**gate, "metric": metric}
            if "max_forgetting" not in gate and isinstance(metric, str):
                gate["max_forgetting"] = info.max_forgetting(metric)
        if isinstance(strategy, Mapping):
            strategy = _fill(strategy, info.training)
            if strategy.get("name", "") == "":
                strategy["name"] = info.strategy
        return {**data, "gate": gate, "strategy": strategy}

    def dump(self) -> dict[str, Any]:
        """The config as plain data, keys spelled as in lifelong.toml."""
        return self.model_dump(by_alias=True)


_NOT_ECHOED = ("registry.metadata", "registry.artifacts")  # URLs: a wrong one may hold a password


def parse(data: Mapping[str, Any], origin: Mapping[str, str] | None = None, source: str | None = None) -> Config:
    """Validate a config tree; the first problem is raised as ConfigError naming its key."""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = _dotted_key(error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        if error["type"] != "extra_forbidden" and "input" in error and key not in _NOT_ECHOED:
            message += f" (got {error['input']!r})"
        env_name = (origin or {}).get(key)
        if env_name:
            raise ConfigError(key, f"{message} [from env {env_name}]", source=None) from None
        raise ConfigError(key, message, source=source) from None
    avalanche = [part for part in config.strategy.parts if part in AVALANCHE_PARTS]
    if avalanche and config.model.task != "sequence_classification":
        raise ConfigError("strategy.name", f"{avalanche[0]} (Avalanche's plugins) trains sequence_classification only,"
                          f" not {config.model.task}", source=source)
    metrics = TASKS[config.model.task].metrics
    if config.gate.metric not in metrics:
        message = f"{config.gate.metric!r} is not a held-out metric of {config.model.task} (one of {', '.join(metrics)})"
        env_name = (origin or {}).get("gate.metric") or (origin or {}).get("model.task")
        if env_name:
            raise ConfigError("gate.metric", f"{message} [from env {env_name}]", source=None)
        raise ConfigError("gate.metric", message, source=source)
    _check_executor(config, origin or {}, source)
    return config


def _check_executor(config: Config, origin: Mapping[str, str], source: str | None) -> None:
    """A remote executor needs its extra, its address or image, and the artifact store on S3 (its
    workers read the spec, rows and champion there and write the candidate there)."""
    train = config.train
    if train.executor == "local":
        return
    from registry.backends import _installed
    from registry.errors import MissingExtra

    module, package = EXECUTOR_EXTRAS[train.executor]
    if not _installed(module):
        raise MissingExtra(train.executor, f"train.executor = \"{train.executor}\" needs {package}")
    required = {"ray": ("train.ray.address", train.ray.address),
                "kubernetes": ("train.kubernetes.image", train.kubernetes.image)}[train.executor]
    problems = [(required[0], f"required when train.executor = \"{train.executor}\"")] if not required[1] else []
    if not config.registry.artifacts.startswith("s3://"):
        problems.append(("registry.artifacts", f"train.executor = \"{train.executor}\" needs the artifact store on S3"
                         " (\"s3://bucket/prefix\"): its workers read the spec, rows and champion there and write"
                         " the candidate there"))
    for key, message in problems:
        env_name = origin.get(key) or origin.get("train.executor")
        if env_name:
            raise ConfigError(key, f"{message} [from env {env_name}]", source=None)
        raise ConfigError(key, message, source=source)


def _dotted_key(loc: tuple[Any, ...]) -> str:
    """The config key an error location points at, without pydantic's union-member tags."""
    parts: list[str] = []
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None:
            break
        fields = {(info.alias or name): info for name, info in model.model_fields.items()}
        parts.append(str(part))
        info = fields.get(str(part))
        annotation = info.annotation if info else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return ".".join(parts)


def load(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read lifelong.toml at `path`, apply env overrides, validate."""
    environ = os.environ if environ is None else environ
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("lifelong.toml", f"{path} does not exist", source=None) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("lifelong.toml", f"not valid TOML: {exc}", source=str(path)) from None
    overrides, origin = env_overrides(environ)
    return parse(merge(data, overrides), origin, source=str(path))


def template(model: str = "embedded:minilm") -> str:
    """The commented lifelong.toml that `lifelong init` writes."""
    text = (Path(__file__).with_name("lifelong.toml")).read_text(encoding="utf-8")
    return text.replace('base = "embedded:minilm"', f"base = {_toml_string(model)}", 1)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
