"""Event-driven reactors for pynetdicom's acceptor associations (DICOM upper layer, PS3.8).

pynetdicom runs two threads per association that *poll*: the upper-layer (DUL) thread sleeps
1 ms whenever it finds nothing to do, and the association thread sleeps 1 ms before every look
at its queues.  A C-STORE on one association crosses that hand-off twice (request in, response
out), so a peer that sends instance after instance waits 2-3 ms per instance doing nothing —
a ceiling of ~300 instances/s whatever the receiver does with the data.

Here both threads *wait* instead: the DUL thread in ``select()`` on its socket and a wake-up
pipe (written whenever something is queued for it to send, or it is told to stop), the
association thread on an event the DUL thread sets after every state-machine action.  Timers
(ARTIM, the network timeout) are still checked at least every :data:`TICK` seconds.  The loops
are otherwise pynetdicom 3.0's own (``DULServiceProvider.run_reactor`` and
``Association._run_reactor``, same order of checks), so the state machine sees exactly the
same events; pynetdicom is pinned to 3.0.x for that reason.

:func:`event_driven` converts an acceptor :class:`~pynetdicom.association.Association` before
its thread starts (see :class:`RequestHandler`).
"""

from __future__ import annotations

import logging
import os
import queue
import select
import threading
import time

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import RequestHandler as _PynetdicomRequestHandler

log = logging.getLogger("pynetdicom.dul")

TICK = 0.05
"""Longest wait between two timer checks, in seconds."""


class EventDrivenDUL(DULServiceProvider):
    """The DICOM upper-layer thread, waiting on its socket instead of sleeping."""

    _wake_r: int = -1
    _wake_w: int = -1

    def _open_wake(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def _close_wake(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def wake(self) -> None:
        """Interrupt the thread's wait (thread-safe, never blocks)."""
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):  # a full pipe wakes it anyway; closed: gone
                pass

    def send_pdu(self, primitive) -> None:  # noqa: ANN001 - pynetdicom's primitive types
        super().send_pdu(primitive)
        self.wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def _wait(self) -> None:
        """Wait until the socket is readable, something was queued, or a tick passed."""
        sock = getattr(self.socket, "socket", None)
        try:
            if sock is None or sock.fileno() < 0:
                raise OSError("no socket")
            pending = getattr(sock, "pending", None)  # an SSL socket may hold decoded bytes
            if pending is not None and pending():
                return
            ready, _, _ = select.select([sock, self._wake_r], [], [], TICK)
        except (OSError, ValueError):
            time.sleep(self._run_loop_delay)
            return
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass

    def _notify_assoc(self) -> None:
        wake = getattr(self.assoc, "_hf_wake", None)
        if wake is not None:
            wake.set()

    def run(self) -> None:
        # pynetdicom's Thread was created with target=<the original run_reactor>
        self.run_reactor()

    def run_reactor(self) -> None:
        """pynetdicom 3.0's DUL loop with ``time.sleep`` replaced by :meth:`_wait`."""
        self._open_wake()
        self._idle_timer.start()
        sleep = False
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                    sleep = True
                if sleep:
                    self._wait()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception as exc:  # noqa: BLE001 - pynetdicom's own handling, verbatim
                    log.error("Exception in DUL.run(), aborting association")
                    log.exception(exc)
                    abort_pdu = A_ABORT_RQ()
                    abort_pdu.source = 0x02
                    abort_pdu.reason_diagnostic = 0x00
                    self.socket.send(abort_pdu.encode())
                    self.assoc.is_aborted = True
                    self.assoc.is_established = False
                    self.assoc._kill = True
                    self._kill_thread = True
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    sleep = True
                    continue
                self.state_machine.do_action(event)
                self._notify_assoc()
                sleep = False
        finally:
            self._notify_assoc()
            self._close_wake()


class EventDrivenAssociation(Association):
    """An acceptor association whose reactor waits for the DUL thread instead of polling."""

    _hf_wake: threading.Event

    def kill(self) -> None:
        self._hf_wake.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's acceptor loop with the 1 ms sleep replaced by a wait for the DUL
        thread's notification (or a timer tick)."""
        self._is_paused = False
        while not self._kill:
            if self.dimse.msg_queue.empty():  # a queued message is served without waiting
                self._hf_wake.wait(TICK)
            self._hf_wake.clear()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            self._reactor_step()

    def _reactor_step(self) -> None:
        """One pass of pynetdicom 3.0's acceptor loop body (after its sleep)."""
        from pynetdicom import evt

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            logging.getLogger("pynetdicom.assoc").info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return
        if self.acse.is_aborted():
            msg_ = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                msg_ += " (A-P-ABORT)"
            logging.getLogger("pynetdicom.assoc").info(msg_)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return
        if not self.dul.is_alive():
            self.kill()
            return
        if self.dul.idle_timer_expired():
            logging.getLogger("pynetdicom.assoc").error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


def event_driven(assoc: Association) -> Association:
    """Convert a not-yet-started acceptor association to the event-driven reactors."""
    assoc.__class__ = EventDrivenAssociation
    assoc.dul.__class__ = EventDrivenDUL
    assoc._hf_wake = threading.Event()  # type: ignore[attr-defined]
    return assoc


class RequestHandler(_PynetdicomRequestHandler):
    """pynetdicom's connection handler, creating event-driven associations."""

    def _create_association(self) -> Association:
        return event_driven(super()._create_association())
