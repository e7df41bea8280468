"""A process to be killed (tests): holds or waits for the active/standby lease, saying which each time it
changes ("active", "standby") on stdout."""

from __future__ import annotations

import sys
import time

from registry.lease import Lease


def main(url: str) -> None:
    lease = Lease(url)
    state = None
    while True:
        now = "active" if lease.try_acquire() else "standby"
        if now != state:
            print(now, flush=True)
            state = now
        time.sleep(0.5)


if __name__ == "__main__":
    main(sys.argv[1])
