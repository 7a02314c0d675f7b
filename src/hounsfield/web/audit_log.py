"""Auditing HTTP access to patient data (PS3.15 A.5 via :mod:`hounsfield.audit`).

:class:`AuditMiddleware` writes one audit event per ``/dicom-web`` request — QIDO, WADO, STOW —
with the caller, their role, the client address, the study the handler noted, and the outcome
from the HTTP status (2xx success, 401/403 serious failure, other 4xx minor, 5xx major).
Events go through an :class:`AuditWriter`, which batches them into short transactions off the
request path (flushed every ``interval`` seconds and at shutdown), so auditing every frame
request does not serialise the readers on the index's write lock.
"""

from __future__ import annotations

import logging
import queue
import threading

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hounsfield.archive.archive import Archive
from hounsfield.audit import Action, Entry, Outcome, record_many

log = logging.getLogger(__name__)


class AuditWriter:
    """A queue of audit entries and the thread that commits them in batches."""

    def __init__(self, archive: Archive, *, interval: float = 0.25, batch: int = 500) -> None:
        self.archive = archive
        self.interval = interval
        self.batch = batch
        self._queue: queue.Queue[Entry] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def add(self, entry: Entry) -> None:
        self._queue.put(entry)
        if self._thread is None:  # not started (e.g. app used without lifespan): write now
            self.flush()

    def flush(self) -> int:
        """Commit everything queued so far; returns how many events were written."""
        with self._lock:
            entries: list[Entry] = []
            while True:
                try:
                    entries.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for start in range(0, len(entries), self.batch):
                chunk = entries[start:start + self.batch]
                try:
                    record_many(self.archive, chunk)
                except Exception:  # noqa: BLE001 - never lose them silently: log and retry
                    log.exception("audit write failed; %d event(s) re-queued", len(chunk))
                    for e in chunk:
                        self._queue.put(e)
                    return start
            return len(entries)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()


def outcome_for(status: int) -> Outcome:
    if status < 400:
        return Outcome.SUCCESS
    if status in (401, 403):
        return Outcome.SERIOUS_FAILURE
    if status < 500:
        return Outcome.MINOR_FAILURE
    return Outcome.MAJOR_FAILURE


def action_for(method: str, path: str) -> Action:
    """QIDO for searches (paths ending in studies/series/instances), STOW for POST, else WADO."""
    if "/workitems" in path or "/subscribers/" in path:
        return Action.UPS
    if method == "POST":
        return Action.STOW
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last in ("studies", "series", "instances"):
        return Action.QIDO
    return Action.WADO


class AuditMiddleware:
    """Pure ASGI middleware auditing every request under ``prefix`` (one event per request)."""

    def __init__(self, app: ASGIApp, writer: AuditWriter, prefix: str = "/dicom-web") -> None:
        self.app = app
        self.writer = writer
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        recorded = False

        async def send_wrapper(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                # queued before the client sees a byte: an answered request is always audited
                recorded = True
                self.writer.add(self._entry(scope, state, message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not recorded:
                self.writer.add(self._entry(scope, state, 500))

    def _entry(self, scope: Scope, state: dict, code: int) -> Entry:
        principal = state.get("principal")
        note = state.get("audit") or {}
        client = scope.get("client")
        query = scope.get("query_string", b"").decode("latin-1")
        detail = f"{scope['method']} {scope['path']}" + (f"?{query}" if query else "")
        detail += f" -> {code}"
        if note.get("detail"):
            detail += f"; {note['detail']}"
        if code >= 400 and state.get("error"):
            detail += f"; {state['error']}"
        return Entry(
            action=action_for(scope["method"], scope["path"]),
            actor=principal.username if principal else "anonymous",
            role=principal.role.value if principal else "",
            outcome=outcome_for(code),
            source=client[0] if client else "",
            destination=self.prefix,
            study_instance_uid=note.get("study", ""),
            patient_id=note.get("patient", ""),
            detail=detail[:2000],
        )

