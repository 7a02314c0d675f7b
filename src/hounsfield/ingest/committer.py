"""Group commit for the Storage SCP: many C-STOREs acknowledged after one index commit.

Every association thread parses its data set and hands it to :meth:`GroupCommitter.submit`,
then waits.  One writer thread takes everything queued at that moment (up to ``max_batch``)
and stores it through the one write path, :func:`hounsfield.archive.store.store_instances`
(blobs written and fsynced in parallel, then one commit).  Each waiting association then gets
its own outcome — so a C-STORE response is still sent only after *its* instance is durable,
but N concurrent associations share one commit instead of queueing for N.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

from hounsfield.archive.archive import Archive
from hounsfield.archive.parse import ParsedInstance
from hounsfield.archive.store import StoreOutcome, store_instances
from hounsfield.errors import OutOfResources

log = logging.getLogger(__name__)


@dataclass
class _Item:
    parsed: ParsedInstance
    source: str
    future: Future


class GroupCommitter:
    """A single writer thread batching :func:`store_instances` calls."""

    def __init__(self, archive: Archive, *, max_batch: int = 64) -> None:
        self.archive = archive
        self.max_batch = max_batch
        self._q: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.instances = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    def submit(self, parsed: ParsedInstance, source: str) -> Future:
        """Queue one instance; the future resolves to its :class:`StoreOutcome` once durable."""
        fut: Future = Future()
        if self._thread is None:
            fut.set_exception(OutOfResources("storage writer is not running"))
            return fut
        self._q.put(_Item(parsed, source, fut))
        return fut

    def store(self, parsed: ParsedInstance, source: str, timeout: float | None = None
              ) -> StoreOutcome:
        return self.submit(parsed, source).result(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._q.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        try:
            outcomes = store_instances(self.archive, [b.parsed for b in batch],
                                       source=[b.source for b in batch])
        except Exception as exc:  # noqa: BLE001 - every waiter must get an answer
            log.error("group commit of %d instances failed: %s", len(batch), exc)
            for b in batch:
                b.future.set_exception(exc)
            return
        self.batches += 1
        self.instances += len(batch)
        for b, o in zip(batch, outcomes, strict=True):
            b.future.set_result(o)
