"""Nothing lost: SIGKILL the ingesting process at random moments, then check every file and row."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path


from daemon.ingest.store import Store
from tests.conftest import jsonl, lifelong_cmd, ROOT, write_config

KILLS = 24


def make_inbox(inbox: Path, rng: random.Random, prefix: str = "f") -> tuple[dict[str, bytes], int, set[str], set[str]]:
    """About forty files: good ones of many sizes, bad ones, duplicates. Returns (files, valid rows,
    names expected in archive/, names expected in quarantine/)."""
    files: dict[str, bytes] = {}
    valid = 0
    to_archive: set[str] = set()
    to_quarantine: set[str] = set()
    seen: set[bytes] = set()
    for i in range(40):
        name = f"{prefix}{i:02d}.jsonl"
        kind = rng.random()
        if kind < 0.15 and seen:
            payload = rng.choice(sorted(seen))  # a duplicate of an earlier file
            to_archive.add(name)
        elif kind < 0.3:
            rows = [{"text": f"bad file {i} row {j}", "label": "x"} for j in range(rng.randint(100, 3000))]
            rows.insert(rng.randrange(len(rows)), {"text": "", "label": "x"})
            payload = jsonl(rows).encode()
            to_quarantine.add(name)
        else:
            rows = [{"text": f"file {i} row {j} {rng.random()}", "label": rng.choice("abcd")}
                    for j in range(rng.randint(4000, 16000))]
            payload = jsonl(rows).encode()
            valid += len(rows)
            seen.add(payload)
            to_archive.add(name)
        files[name] = payload
        (inbox / name).write_bytes(payload)
    return files, valid, to_archive, to_quarantine


def test_sigkill_during_ingestion_loses_and_duplicates_nothing(home_root: Path) -> None:
    write_config(home_root, inbox={"settle_seconds": 0})
    rng = random.Random(20261128)
    files, valid, to_archive, to_quarantine = make_inbox(home_root / "inbox", rng)

    kills = attempts = rounds = 0
    while kills < KILLS and attempts < 200:
        attempts += 1
        proc = subprocess.Popen(lifelong_cmd("ingest", "--once", "--home", str(home_root)), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 0.6))  # start-up takes ~0.35 s: kills land in recovery and ingestion
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if not os.listdir(home_root / "inbox") and kills < KILLS:
            # a fast machine ingested everything between too few kills: another round of files
            rounds += 1
            more, more_valid, more_archive, more_quarantine = make_inbox(home_root / "inbox", rng, prefix=f"r{rounds}f")
            files.update(more)
            valid += more_valid
            to_archive |= more_archive
            to_quarantine |= more_quarantine
    assert kills >= KILLS, f"only {kills} kills landed while ingesting in {attempts} attempts"

    done = subprocess.run(lifelong_cmd("ingest", "--once", "--home", str(home_root)), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    archive = {p.name for p in (home_root / "archive").iterdir()}
    quarantine = {p.name for p in (home_root / "quarantine").iterdir()}
    assert os.listdir(home_root / "inbox") == []
    assert archive == to_archive
    assert quarantine == to_quarantine | {f"{n}.error.json" for n in to_quarantine}
    for name in archive:
        assert (home_root / "archive" / name).read_bytes() == files[name]  # byte-identical
    for name in to_quarantine:
        assert json.loads((home_root / "quarantine" / f"{name}.error.json").read_text())["reason"] == "invalid_rows"

    with Store(home_root / "state" / "rows.sqlite") as store:
        assert store.row_count() == valid  # every valid row exactly once
        counts = store.counts(pending=False)
        assert counts["train"] + counts["eval"] == valid
        outcomes = store.file_outcomes()
        assert outcomes["accepted"] + outcomes["duplicate"] == len(to_archive)
        assert outcomes["quarantined"] == len(to_quarantine)
        assert store.unfinalized() == []
        # each accepted file's rows are stored once, in its own segment, and nothing else is stored
        per_file = store.segment_rows()
        accepted = dict(store._db.execute("SELECT id, rows_train + rows_eval FROM files WHERE outcome = 'accepted'"))
        assert per_file == {k: v for k, v in accepted.items() if v}
        assert sum(per_file.values()) == valid
        shas = [r[0] for r in store._db.execute("SELECT sha256 FROM files WHERE outcome = 'accepted'")]
        assert len(shas) == len(set(shas))
    leftovers = [p.name for d in ("archive", "quarantine", "state/segments") for p in (home_root / d).iterdir()
                 if p.name.startswith(".")]
    assert leftovers == []
