"""The home directory: where config, inbox, quarantine, archive, registry and state live."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from daemon import config as config_mod
from daemon.config import Config
from registry.fsutil import atomic_write
from registry.errors import HomeNotFound

if TYPE_CHECKING:
    from registry.registry import Registry

CONFIG_NAME = "lifelong.toml"
DEFAULT_HOME = "lifelong-home"


@dataclass(frozen=True, kw_only=True)
class Home:
    root: Path
    config: Config

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def inbox(self) -> Path:
        path = Path(os.path.expanduser(self.config.inbox.path))
        return path if path.is_absolute() else self.root / path

    @property
    def shared(self) -> Path:
        """Where the row store, archive and quarantine live: `failover.state`, else the home."""
        if not self.config.failover.state:
            return self.root
        path = Path(os.path.expanduser(self.config.failover.state))
        return path if path.is_absolute() else self.root / path

    @property
    def quarantine(self) -> Path:
        return self.shared / "quarantine"

    @property
    def archive(self) -> Path:
        return self.shared / "archive"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def models(self) -> Path:
        """Embedded models converted for this home (`embedded:smollm2`), verified and reused on each use."""
        return self.root / "models"

    @property
    def state(self) -> Path:
        """Internal state: the row store, locks, the daemon's request files."""
        return self.root / "state"

    @property
    def store_path(self) -> Path:
        """The row store; with `failover.state` shared by every daemon of the group (only the active writes)."""
        return (self.shared / "rows.sqlite") if self.config.failover.state else self.state / "rows.sqlite"

    def ensure_dirs(self) -> None:
        for path in (self.inbox, self.quarantine, self.archive, self.registry, self.state):
            path.mkdir(parents=True, exist_ok=True)


def resolve(home: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Path:
    """`--home`, else `$LIFELONG_HOME`, else `./lifelong-home`."""
    environ = os.environ if environ is None else environ
    chosen = home or environ.get("LIFELONG_HOME") or DEFAULT_HOME
    return Path(chosen).expanduser().absolute()


def init(root: Path, model: str = "embedded:minilm") -> tuple[Home, bool]:
    """Create the home and a commented lifelong.toml; an existing config is kept. Returns (home, created)."""
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / CONFIG_NAME
    created = not config_path.exists()
    if created:
        text = config_mod.template(model)
        config_mod.parse(config_mod.tomllib.loads(text), source=str(config_path))  # never write a bad file
        atomic_write(config_path, text)
    home = open_home(root)
    return home, created


def open_home(root: Path, environ: Mapping[str, str] | None = None) -> Home:
    """Load and validate the home's config and make sure its directories exist."""
    config_path = root / CONFIG_NAME
    if not config_path.is_file():
        raise HomeNotFound(str(root))
    home = Home(root=root, config=config_mod.load(config_path, environ))
    home.ensure_dirs()
    if home.config.registry.metadata or home.config.registry.artifacts:
        from registry.backends import mark_remote  # from now on, Registry(home.registry) alone is refused

        mark_remote(home.registry, metadata=home.config.registry.metadata, artifacts=home.config.registry.artifacts)
    return home


def open_registry(home: Home, *, probe: bool = False, **kwargs: Any) -> "Registry":
    """The home's registry on the backends `registry.metadata` / `registry.artifacts` name (SQLite and
    files in the home by default). `probe`: check first that the object store honours create-only
    writes (the daemon does at start; UnsafeStore, exit 2, otherwise). Other arguments go to Registry."""
    from registry.backends import open_backends
    from registry.registry import Registry

    metadata, artifacts = open_backends(home.registry, home.config.registry.metadata,
                                        home.config.registry.artifacts, probe=probe)
    return Registry(home.registry, metadata=metadata, artifacts=artifacts, **kwargs)
