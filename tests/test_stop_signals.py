"""daemon/service/signals.py: SIGTERM/SIGINT reach the stop call whatever lock the main thread holds
when they land. Each such case runs in a fresh interpreter, so a handler that deadlocks fails the
test by its timeout instead of hanging the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from daemon.service.signals import StopSignals

ROOT = Path(__file__).resolve().parents[1]


def run_script(body: str) -> subprocess.CompletedProcess[str]:
    script = "import os, signal, threading, time\nfrom daemon.service.signals import StopSignals\n"
    script += textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:  # the interpreter is killed by run()
        pytest.fail(f"the stop call never happened (deadlocked in the signal handler?): {exc.stdout!r} {exc.stderr!r}")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_landing_inside_the_main_threads_wait_on_the_stop_event_still_stops(signame: str) -> None:
    # the daemon's case exactly: its stop call sets the event the main loop waits on, and the signal
    # arrives while the main thread holds that event's lock (a plain handler calling set() hangs here)
    done = run_script(f"""
        wake = threading.Event()
        with StopSignals(lambda signum: wake.set()):
            with wake._cond:  # as inside Event.wait, between taking the lock and waiting
                os.kill(os.getpid(), signal.{signame})
                for _ in range(1000):  # bytecodes at which the Python-level handler runs
                    pass
                time.sleep(0.2)
            assert wake.wait(10), "stop never called"
        print("stopped")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"


def test_the_stop_call_waits_for_a_lock_the_main_thread_holds_when_the_signal_lands() -> None:
    done = run_script("""
        lock = threading.Lock()
        calls = []
        def on_stop(signum):
            with lock:
                calls.append(signum)
        with StopSignals(on_stop):
            with lock:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.3)
                assert calls == []  # not called in the main thread, under the lock
            deadline = time.monotonic() + 10
            while not calls and time.monotonic() < deadline:
                time.sleep(0.01)
        print(calls == [signal.SIGTERM])
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_other_signals_do_not_stop_and_the_earlier_handlers_come_back() -> None:
    assert threading.current_thread() is threading.main_thread()
    calls: list[int] = []
    usr1: list[int] = []
    before_term = signal.getsignal(signal.SIGTERM)
    before_usr1 = signal.signal(signal.SIGUSR1, lambda signum, _frame: usr1.append(signum))
    before_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before_fd)
    try:
        with StopSignals(calls.append) as signals:
            reader = signals._reader
            os.kill(os.getpid(), signal.SIGUSR1)  # has a Python handler, so its number reaches the pipe too
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                if calls:
                    break
                threading.Event().wait(0.01)
        assert calls == [signal.SIGTERM]
        assert usr1 == [signal.SIGUSR1]  # its own handler still ran
        assert signal.getsignal(signal.SIGTERM) is before_term
        assert signal.set_wakeup_fd(-1) == before_fd
        signal.set_wakeup_fd(before_fd)
        assert reader is not None and not reader.is_alive()
    finally:
        signal.signal(signal.SIGUSR1, before_usr1)


def test_a_failing_stop_call_does_not_end_the_reader() -> None:
    done = run_script("""
        calls = []
        def on_stop(signum):
            calls.append(signum)
            if len(calls) == 1:
                raise RuntimeError("first call fails")
        with StopSignals(on_stop):
            for expected in (1, 2):
                os.kill(os.getpid(), signal.SIGTERM)
                deadline = time.monotonic() + 10
                while len(calls) < expected and time.monotonic() < deadline:
                    time.sleep(0.01)
        print(len(calls))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
    assert "first call fails" in done.stderr  # logged, with its traceback
