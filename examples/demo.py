"""`make demo`: the example story through a real daemon on a fresh home, narrated.

    python -m examples.demo [--home demo-home]

Starts `lifelong run` on a new home with the embedded MiniLM, drops the files of
examples/sentiment/ into its inbox one by one, asks for an update after each
(`lifelong update --now --wait`), and says what the gate decided and why, with the score on every
batch's held-out rows; then rolls back with `lifelong rollback`, shows the audit entry, and writes
`lifelong report`. Everything goes through the `lifelong` command line, as a user would type it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORY = ROOT / "examples" / "sentiment"
MARKER = ".lifelong-demo"  # a home this script made, and may remove and make again
STEPS = (
    ("1-movie-reviews.jsonl", "the first batch: movie-review snippets, positive or negative"),
    ("2-product-reviews-neutral.jsonl", "a new label: neutral product-review snippets, with positive and negative ones"),
    ("3-tweets.jsonl", "a shifted domain: tweets, with all three labels"),
    ("4-poisoned-flipped-labels.jsonl", "a poisoned batch: movie-review snippets whose labels were flipped"),
)
# The demo's home differs from `lifelong init`'s in four keys, set for every command through the
# environment: a fifth of each file held out (100 rows a file rather than 50), files taken at once,
# updates only when asked (so each file is one update), and any free port for /metrics.
SETTINGS = {"LIFELONG_INBOX__EVAL_FRACTION": "0.2", "LIFELONG_INBOX__SETTLE_SECONDS": "0",
            "LIFELONG_SCHEDULE__MIN_NEW_ROWS": "1000000", "LIFELONG_METRICS__BIND": "127.0.0.1:0"}


class Demo:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, **SETTINGS, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.tty = sys.stdout.isatty()
        self.started = time.monotonic()

    def lifelong(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "daemon.cli", *args, "--home", str(self.home)], cwd=ROOT,
                              env=self.env, capture_output=True, text=True)
        if check and done.returncode:
            raise SystemExit(f"lifelong {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done

    def doc(self, *args: str) -> object:
        return json.loads(self.lifelong(*args, "--json").stdout)

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def fresh_home(self) -> None:
        if self.home.exists():
            if not (self.home / MARKER).exists():
                raise SystemExit(f"{self.home} exists and was not made by the demo; name another with --home")
            shutil.rmtree(self.home)
        self.say(self.lifelong("init").stdout.strip())
        (self.home / MARKER).write_text("made by examples/demo.py\n")

    def start_daemon(self) -> subprocess.Popen[str]:
        log = open(self.home / "daemon.log", "w")
        daemon = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--home", str(self.home)], cwd=ROOT,
                                  env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while (self.doc("status").get("daemon") or {}).get("pid") != daemon.pid:  # type: ignore[union-attr]
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start; see {self.home / 'daemon.log'}")
            time.sleep(0.5)
        self.say(f"daemon running (pid {daemon.pid}), log in {self.home / 'daemon.log'}")
        return daemon

    def drop(self, name: str) -> None:
        """Written under a temporary name and renamed into place, as any writer to an inbox should."""
        inbox = self.home / "inbox"
        shutil.copyfile(STORY / name, inbox / f".{name}.part")
        os.rename(inbox / f".{name}.part", inbox / name)
        deadline = time.monotonic() + 120
        while not (self.home / "archive" / name).exists():
            if (self.home / "quarantine" / name).exists() or time.monotonic() > deadline:
                raise SystemExit(f"{name} was not ingested: see {self.home / 'quarantine'}")
            time.sleep(0.3)

    def update(self) -> dict:
        """`lifelong update --now --wait`, with a progress line from `lifelong status` meanwhile."""
        result: dict = {}

        def ask() -> None:
            result.update(json.loads(self.lifelong("update", "--now", "--wait", "--json").stdout))

        asking = threading.Thread(target=ask)
        asking.start()
        last_print = 0.0
        while asking.is_alive():
            asking.join(timeout=5)
            progress = self.doc("status").get("update_in_progress")  # type: ignore[union-attr]
            if not progress or not asking.is_alive():
                continue
            line = _progress(progress)
            if self.tty:
                print(f"\r\x1b[2K  {line}", end="", flush=True)
            elif time.monotonic() - last_print >= 15:
                self.say(f"  {line}")
                last_print = time.monotonic()
        if self.tty:
            print("\r\x1b[2K", end="")
        return result

    def narrate(self, outcome: dict) -> str | None:
        version = outcome.get("version")
        self.say(f"  decision: {outcome.get('decision')}" + (f" ({version})" if version else ""))
        for reason in outcome.get("reasons", []):
            self.say(f"    - {reason}")
        if not version:
            return None
        shown = self.doc("show", version)
        per = shown["metrics"]["candidate"]["per_experience"]  # type: ignore[index]
        before = (shown["metrics"].get("champion") or {}).get("per_experience") or {}  # type: ignore[union-attr]
        self.say(f"  accuracy on each batch's held-out rows ({version}"
                 + (" against the champion it was judged against):" if before else "):"))
        for batch in sorted(per, key=int):
            then = before.get(batch)
            change = f"  (champion {then:.3f}, {per[batch] - then:+.3f})" if then is not None else ""
            self.say(f"    batch {batch}: {per[batch]:.3f}{change}")
        return version

    def run(self) -> None:
        self.say(f"lifelong demo: the story in {STORY.relative_to(ROOT)} through a real daemon on {self.home}\n")
        self.fresh_home()
        daemon = self.start_daemon()
        try:
            for number, (name, what) in enumerate(STEPS, 1):
                rows = sum(1 for _ in (STORY / name).open(encoding="utf-8"))
                self.say(f"\n[{number}/{len(STEPS)}] {name}: {rows} rows, {what}")
                self.drop(name)
                self.say(f"  ingested; training a candidate from {self.doc('status')['champion'] or 'the base model'}"  # type: ignore[index]
                         f" (elapsed {self.elapsed()})")
                self.narrate(self.update())
            self.say("\nversions:\n" + _indent(self.lifelong("versions").stdout))
            champion = self.doc("status")["champion"]  # type: ignore[index]
            self.say(f"\nSuppose users report bad answers from {champion}: roll back to the champion before it.")
            self.say("$ lifelong rollback --reason 'demo: bad answers reported'")
            rolled = self.lifelong("rollback", "--reason", "demo: bad answers reported", check=False)
            if rolled.returncode:  # only one champion so far: nothing to go back to
                self.say(_indent(rolled.stderr))
            else:
                self.say(_indent(rolled.stdout))
                entry = self.doc("status")["audit"][0]  # type: ignore[index]
                self.say(f"audit entry: {entry['at']} {entry['actor']} {entry['action']} {entry['from']} -> "
                         f"{entry['to']} ({entry['reason']}); {entry['from']} is never promoted automatically again")
            self.say("\n" + self.lifelong("report").stdout.strip() + "  (open it in a browser)")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
        self.say(f"\ndone in {self.elapsed()}; the home stays in {self.home} (lifelong status --home {self.home})")

    def elapsed(self) -> str:
        minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
        return f"{minutes}:{seconds:02d}"


def _progress(progress: dict) -> str:
    text = f"batch {progress['batch']}: {progress['stage']}"
    if progress.get("step") is not None:
        text += f", step {progress['step']} of {progress['steps']}"
    if progress.get("samples_per_second"):
        text += f", {progress['samples_per_second']:.1f} samples/s"
    if progress.get("elapsed_seconds") is not None:
        text += f", {int(progress['elapsed_seconds'])} s"
    return text


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=ROOT / "demo-home")
    Demo(parser.parse_args().home.absolute()).run()


if __name__ == "__main__":
    main()
