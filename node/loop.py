"""The background loop the completion monitor, workers and senders share.

Each runs ``step()`` over and over, sleeping ``poll_interval_seconds`` when a step found
nothing to do. In one process the parts also wake each other (a completed study wakes
the worker, published results wake the sender), so the polling interval bounds the
delay only between processes, where the database is the hand-over.
"""

from __future__ import annotations

import logging
import threading

LOGGER = logging.getLogger("cxr_node.loop")


class PollingThread(threading.Thread):
    """Runs :meth:`step` until stopped; a step that did work wakes ``followers``.

    A draining loop (workers, senders) goes straight on while steps find work; a
    ``periodic`` one (the completion check) waits its interval after every step.
    """

    periodic = False

    def __init__(self, name: str, poll_interval_seconds: float) -> None:
        super().__init__(name=name, daemon=True)
        self.poll_interval_seconds = poll_interval_seconds
        self.followers: list[PollingThread] = []
        self._stopping = threading.Event()
        self._wake = threading.Event()

    def step(self) -> int:
        """Do one round of work; return how many items it handled (0: nothing to do)."""
        raise NotImplementedError

    def wake(self) -> None:
        """Cut the current sleep short: there is work for this loop."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                done = self.step()
            except Exception:  # noqa: BLE001 - keep going; the database may come back
                LOGGER.exception("%s: step failed; retrying", self.name)
                done = 0
            if done:
                for follower in self.followers:
                    follower.wake()
            if not done or self.periodic:
                self._wake.wait(self.poll_interval_seconds)
                self._wake.clear()

    def stop(self, timeout: float = 60.0) -> None:
        self._stopping.set()
        self._wake.set()
        self.join(timeout=timeout)
