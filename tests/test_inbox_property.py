"""A running daemon against random inbox rounds: random names (any bytes), random contents and
nesting, and every kind of entry (files, links, FIFOs, folders holding such things), with the inbox
on the home's file system and on another one. After each round: /healthz answers 200, every entry
is accounted for (archived, quarantined or set aside, or reported stuck with a reason), no row is
stored twice, and a good file dropped last was ingested."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from daemon import home as home_mod
from daemon.ingest.store import Store
from tests.conftest import ROOT, cli, jsonl, spawn, write_config

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
rows = st.lists(st.fixed_dictionaries({"text": st.text(min_size=1, max_size=30), "label": st.sampled_from(["a", "b", "c"])},
                                      optional={"extra": json_values, "split": st.sampled_from(["train", "eval", "x"])}),
                min_size=1, max_size=8)
# a name: any bytes but "/" and NUL; a leading "." or a temp suffix would make the inbox ignore it
raw_names = st.binary(min_size=1, max_size=24).map(lambda b: b.replace(b"/", b"_").replace(b"\x00", b"_"))
suffixes = st.sampled_from([b".jsonl", b".csv", b".jsonl.gz", b".parquet", b".txt", b""])
contents = st.one_of(
    st.binary(max_size=300),
    rows.map(lambda r: jsonl(r).encode()),
    st.integers(1, 1100).map(lambda depth: b'{"text": "deep", "label": "a", "x": ' + b"[" * depth + b"]" * depth + b"}\n"),
    rows.map(lambda r: gzip.compress(jsonl(r).encode())),
)
entry = st.one_of(
    st.tuples(st.just("file"), contents),
    st.tuples(st.just("symlink"), st.sampled_from(["outside", "dangling", "loop"])),
    st.tuples(st.just("fifo"), st.none()),
    st.tuples(st.just("folder"), st.lists(st.sampled_from(["file", "fifo", "socket", "symlink"]), max_size=3)),
)
rounds = st.lists(st.tuples(raw_names, suffixes, entry), min_size=1, max_size=6)


def make_socket(folder: bytes, name: bytes) -> None:
    """A listening Unix socket left behind (its path may be too long to bind directly: bind from its folder)."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(name)
        sock.close()
    finally:
        os.chdir(here)


def create(inbox: bytes, name: bytes, kind: str, detail: object, outside: Path) -> None:
    path = os.path.join(inbox, name)
    if kind == "file":
        with open(path, "wb") as handle:
            handle.write(detail)  # type: ignore[arg-type]
    elif kind == "symlink":
        target = {"outside": os.fsencode(outside), "dangling": b"/nonexistent/x.jsonl", "loop": name}[detail]  # type: ignore[index]
        os.symlink(target, path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.mkdir(path)
        for i, inner in enumerate(detail):  # type: ignore[arg-type]
            inner_name = f"{i}-{inner}".encode()
            if inner == "file":
                with open(os.path.join(path, inner_name), "wb") as handle:
                    handle.write(b'{"text": "inside", "label": "a"}\n')
            elif inner == "fifo":
                os.mkfifo(os.path.join(path, inner_name))
            elif inner == "socket":
                make_socket(path, inner_name)
            else:
                os.symlink(b"/etc/passwd", os.path.join(path, inner_name))


class Daemon:
    def __init__(self, root: Path, inbox: Path) -> None:
        self.root, self.inbox = root, inbox
        self.proc = spawn("run", "--home", str(root))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            daemon = self.status()["daemon"]
            if daemon and daemon.get("metrics_port") and self.healthz() == 200:
                break
            assert self.proc.poll() is None, self.proc.communicate()
            time.sleep(0.1)
        else:
            raise AssertionError("the daemon did not start")

    def status(self) -> dict:
        return json.loads(cli("status", "--home", str(self.root), "--json").stdout)

    def healthz(self) -> int:
        port = (self.status()["daemon"] or {}).get("metrics_port")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                return answer.status
        except OSError:
            return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope="module", params=["same file system", "another file system"])
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("prop")
    root = base / "home"
    home_mod.init(root)
    inbox = root / "inbox"
    mounted = None
    if request.param == "another file system":
        mounted = base / "volume"
        mounted.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mounted)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        inbox = mounted / "inbox"
        inbox.mkdir()
    write_config(root, inbox={"settle_seconds": 0, "rescan_seconds": 0.5, "path": str(inbox)},
                 schedule={"min_new_rows": 10**9, "max_wait": "1000d"}, metrics={"bind": "127.0.0.1:0"})
    running = Daemon(root, inbox)
    yield running
    running.stop()
    if mounted is not None:
        subprocess.run(["umount", "-l", str(mounted)], check=False)


_round = [0]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(entries=rounds)
def test_every_entry_is_accounted_for_and_the_daemon_stays_up(daemon: Daemon, entries: list, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    _round[0] += 1
    prefix = f"r{_round[0]:03d}-".encode()
    inbox = os.fsencode(daemon.inbox)
    outside = daemon.root / "outside-target.jsonl"
    outside.write_text(jsonl([{"text": "never read through a link", "label": "a"}]))
    created: set[bytes] = set()
    for i, (raw, suffix, (kind, detail)) in enumerate(entries):
        name = prefix + f"{i}-".encode() + raw.rstrip(b"~") + suffix
        if name.endswith((b".tmp", b".part", b".partial")):
            name += b"-x"
        create(inbox, name, kind, detail, outside)
        created.add(name)
    good = prefix + b"zz-good.jsonl"
    with open(os.path.join(inbox, good), "wb") as handle:
        handle.write(jsonl([{"text": f"round {_round[0]} good row {j}", "label": "a"} for j in range(3)]).encode())
    created.add(good)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = {name for name in os.listdir(inbox) if name.startswith(prefix)}
        stuck = {item["file"] for item in daemon.status()["inbox"]["stuck"]}
        if not left or (left and len(left) == len(stuck)):
            break
        time.sleep(0.1)
    assert daemon.proc.poll() is None
    assert daemon.healthz() == 200
    assert not left, (left, daemon.status()["inbox"])

    with Store(daemon.root / "state" / "rows.sqlite", readonly=True) as store:
        mine = [r for r in store.file_records() if os.fsencode(r.name).startswith(prefix)]
        records = {os.fsencode(r.name): r for r in mine}
        assert set(records) == created and len(mine) == len(created)  # one record per entry: none missing, none twice
        for name, record in records.items():
            assert record.finalized
            folder = daemon.root / ("quarantine" if record.outcome == "quarantined" else "archive")
            aside = daemon.inbox / ".lifelong-quarantine"
            assert os.path.lexists(folder / record.dest) or os.path.lexists(aside / record.dest), record
        event(f"outcomes {sorted({r.outcome for r in records.values()})}")  # --hypothesis-show-statistics
        assert records[good].outcome == "accepted" and records[good].rows_train + records[good].rows_eval == 3
        assert store.row_count() == sum(store.segment_rows().values())
    assert outside.read_text().startswith('{"text": "never read')

