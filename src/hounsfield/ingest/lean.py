"""Associations that send and query, on one thread, without pynetdicom's per-PDU machinery
(PS3.8, PS3.7).

A modality or PACS that only *sends*, or a viewer or PACS that *queries* (its A-ASSOCIATE-RQ
proposes Storage, Verification and Query/Retrieve FIND SOP classes, nothing else, no role
selection, no TLS) is served here: one thread reads a PDU, reassembles the P-DATA fragments into
the command and the data set, hands the data set's bytes — as received, never re-encoded — to
the node's store function (or the identifier to its find function) and writes the responses.
No queues, no second thread, no polling: the per-instance overhead is a few socket calls and a
small command set to decode and encode.  Everything else (C-MOVE / C-GET, role negotiation,
TLS) goes through pynetdicom, which this module uses anyway to decode and negotiate the
association request (``A_ASSOCIATE_RQ``, ``negotiate_as_acceptor``), so both paths accept
exactly the same presentation contexts.

Faults: a PDU the state machine does not expect, a P-DATA on a context that was not accepted,
a truncated stream or a silent peer (network timeout) end the association with an A-ABORT; a
data set cut short by an A-ABORT or a closed connection is discarded (nothing is stored).
"""

from __future__ import annotations

import hashlib
import logging
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import negotiate_as_acceptor

from hounsfield.dicom.codec import decode_dataset, encode_dataset

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
MAX_PDU_READ = 2**31 - 1  # when we announce no maximum (0): what one PDU length field can say
_HDR = struct.Struct(">BBL")
_PDV = struct.Struct(">LBB")
_ELEM = struct.Struct("<HHL")

# DIMSE command fields (PS3.7 E.1)
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_CANCEL_RQ = 0x0FFF
NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0001

#: find(identifier, sop_class, cancelled) -> (status, error comment, response identifier)...
Find = Callable[[Callable[[], Dataset], str, Callable[[], bool]],
                Iterator[tuple[int, str, "Dataset | None"]]]


class Abort(Exception):
    """End the association with an A-ABORT (the reason is logged)."""


class PeerAborted(Exception):
    """The peer sent an A-ABORT while we were answering."""


@dataclass
class Request:
    """What :func:`peek_request` read: the decoded A-ASSOCIATE-RQ and its raw length."""

    primitive: A_ASSOCIATE
    size: int

    @property
    def abstract_syntaxes(self) -> set[str]:
        return {str(c.abstract_syntax) for c in self.primitive.presentation_context_definition_list}

    @property
    def has_role_selection(self) -> bool:
        return any(isinstance(i, SCP_SCU_RoleSelectionNegotiation)
                   for i in self.primitive.user_information)


def peek_request(sock: socket.socket, timeout: float) -> Request | None:
    """Read the A-ASSOCIATE-RQ without consuming it (``MSG_PEEK``), so the connection can still
    be handed to pynetdicom; ``None`` when the first PDU is not a decodable A-ASSOCIATE-RQ."""
    sock.settimeout(timeout)
    try:
        head = _peek(sock, 6)
        if head is None or head[0] != 0x01:
            return None
        _t, _r, length = _HDR.unpack(head)
        if length > 1024 * 1024:
            return None
        raw = _peek(sock, 6 + length)
        if raw is None:
            return None
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(raw)
        return Request(pdu.to_primitive(), 6 + length)
    except (OSError, ValueError, struct.error, IndexError, KeyError, TypeError) as exc:
        log.debug("A-ASSOCIATE-RQ not readable for the lean path: %s", exc)
        return None


def _peek(sock: socket.socket, n: int) -> bytes | None:
    while True:
        data = sock.recv(n, socket.MSG_PEEK | socket.MSG_WAITALL)
        if len(data) >= n:
            return data
        if not data:
            return None
        time.sleep(0.001)  # part of the PDU is still in flight


@dataclass
class Accepted:
    calling_ae: str
    contexts: dict[int, tuple[str, str]]  # id -> (abstract syntax, transfer syntax)


class StorageAssociation:
    """One accepted association that stores and queries, served on the calling thread.

    ``store(data, sop_class, sop_instance, sha256)`` must return ``(status, comment)`` for
    the C-STORE-RSP; it receives the Part 10 bytes (preamble, file meta with the calling AE as
    source, the data set as received) and their SHA-256 (hex), computed fragment by fragment
    while the data set arrives, so hashing overlaps the transfer.  ``find`` (see :data:`Find`)
    gives a C-FIND's responses, each written to the socket as it comes; a C-CANCEL-RQ read
    between two of them ends the query (PS3.7 9.3.2.3).
    """

    def __init__(self, sock: socket.socket, *, implementation_uid: str,
                 implementation_version: str, max_pdu: int, network_timeout: float | None,
                 store: Callable[[bytes, str, str, str], tuple[int, str]],
                 find: Find | None = None) -> None:
        self.sock = sock
        self.implementation_uid = implementation_uid
        self.implementation_version = implementation_version
        self.max_pdu = max_pdu
        self.network_timeout = network_timeout
        self.store = store
        self.find = find
        self.stored = 0
        self.peer_max_pdu = 0  # the requestor's Maximum Length Received (0: no limit)

    # -- association establishment (PS3.8 7.1) ----------------------------------------------
    def reject(self, rq: Request, result: int, source: int, diagnostic: int) -> None:
        """Consume the A-ASSOCIATE-RQ and answer A-ASSOCIATE-RJ."""
        self._recv_exact(rq.size)
        self._send_reject(result, source, diagnostic)

    def accept(self, rq: Request, supported: list) -> Accepted | None:
        """Consume the A-ASSOCIATE-RQ, negotiate the presentation contexts against
        ``supported`` and answer A-ASSOCIATE-AC (or -RJ when the application context is not
        DICOM's).  Returns what was accepted, or ``None`` after a rejection."""
        self._recv_exact(rq.size)
        prim = rq.primitive
        self.peer_max_pdu = int(prim.maximum_length_received or 0)
        if str(prim.application_context_name) != APPLICATION_CONTEXT:
            self._send_reject(0x01, 0x01, 0x02)
            return None
        results, _roles = negotiate_as_acceptor(prim.presentation_context_definition_list,
                                                supported, None)
        ac = A_ASSOCIATE()
        ac.application_context_name = UID(APPLICATION_CONTEXT)
        ac.calling_ae_title = prim.calling_ae_title
        ac.called_ae_title = prim.called_ae_title
        ac.result, ac.result_source = 0x00, 0x01
        ac.presentation_context_definition_results_list = results
        mx = MaximumLengthNotification()
        mx.maximum_length_received = self.max_pdu
        impl = ImplementationClassUIDNotification()
        impl.implementation_class_uid = UID(self.implementation_uid)
        ver = ImplementationVersionNameNotification()
        ver.implementation_version_name = self.implementation_version
        ac.user_information = [mx, impl, ver]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(ac)
        self.sock.sendall(pdu.encode())
        contexts = {c.context_id: (str(c.abstract_syntax), str(c.transfer_syntax[0]))
                    for c in results if c.result == 0x00}
        return Accepted(str(prim.calling_ae_title).strip(), contexts)

    def _send_reject(self, result: int, source: int, diagnostic: int) -> None:
        prim = A_ASSOCIATE()
        prim.result, prim.result_source, prim.diagnostic = result, source, diagnostic
        pdu = A_ASSOCIATE_RJ()
        pdu.from_primitive(prim)
        self.sock.sendall(pdu.encode())

    # -- data transfer (PS3.8 9.3.5, PS3.7 9.3.1 / 9.3.5) ----------------------------------
    def serve(self, acc: Accepted) -> str:
        """Serve DIMSE messages until the peer releases (returns ``"released"``) or the
        association ends otherwise (``"aborted"``, ``"closed"``, ``"timeout"``)."""
        self.sock.settimeout(self.network_timeout)
        command: list[bytes] = []
        data: list[memoryview] = []
        cmd: dict[int, bytes] | None = None
        cmd_ctx = 0
        part10: tuple[bytes, hashlib._Hash] | None = None  # file meta + running hash
        try:
            while True:
                ptype, body = self._read_pdu()
                if ptype == 0x04:  # P-DATA-TF
                    for ctx, ctrl, frag in _pdvs(body):
                        if ctx not in acc.contexts:
                            raise Abort(f"P-DATA on presentation context {ctx}, "
                                        f"which was not accepted")
                        if ctrl & 0x01:  # command fragment
                            if cmd is not None:
                                raise Abort("a new command arrived before the data set ended")
                            command.append(bytes(frag))
                            if ctrl & 0x02:
                                cmd, cmd_ctx = _decode_command(b"".join(command)), ctx
                                command = []
                                if _us(cmd, 0x0800) == NO_DATA_SET:
                                    self._dispatch(acc, cmd, cmd_ctx, None, None)
                                    cmd = None
                                else:
                                    part10 = self._part10_start(acc, cmd, cmd_ctx)
                        else:
                            if cmd is None or ctx != cmd_ctx:
                                raise Abort("a data set fragment arrived without its command")
                            data.append(frag)
                            if part10 is not None:
                                part10[1].update(frag)
                            if ctrl & 0x02:
                                self._dispatch(acc, cmd, cmd_ctx, data, part10)
                                cmd, data, part10 = None, [], None
                elif ptype == 0x05:  # A-RELEASE-RQ
                    self.sock.sendall(b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00")
                    return "released"
                elif ptype == 0x07:  # A-ABORT
                    return "aborted"
                else:
                    raise Abort(f"unexpected PDU type 0x{ptype:02X} on an established association")
        except Abort as exc:
            log.warning("aborting association from %s: %s", acc.calling_ae, exc)
            self._send_abort()
            return "aborted"
        except PeerAborted:
            return "aborted"
        except TimeoutError:
            log.warning("network timeout on association from %s: aborting", acc.calling_ae)
            self._send_abort()
            return "timeout"
        except (ConnectionError, EOFError, OSError) as exc:
            log.info("association from %s closed by the peer: %s", acc.calling_ae, exc)
            return "closed"

    def _part10_start(self, acc: Accepted, cmd: dict[int, bytes],
                      ctx: int) -> tuple[bytes, hashlib._Hash] | None:
        """For a C-STORE-RQ on its own context: the Part 10 file meta (PS3.10 7.1) the data set
        will be stored behind, and a SHA-256 over it that the fragments then extend."""
        sop_class = _ui(cmd, 0x0002)
        abstract, ts = acc.contexts[ctx]
        if _us(cmd, 0x0100) != C_STORE_RQ or sop_class != abstract:
            return None
        meta = file_meta(sop_class, _ui(cmd, 0x1000), ts, self.implementation_uid,
                         self.implementation_version, acc.calling_ae)
        return meta, hashlib.sha256(meta)

    def _dispatch(self, acc: Accepted, cmd: dict[int, bytes], ctx: int,
                  data: list[memoryview] | None,
                  part10: tuple[bytes, hashlib._Hash] | None) -> None:
        field = _us(cmd, 0x0100)
        msg_id = _us(cmd, 0x0110)
        sop_class = _ui(cmd, 0x0002)
        if field == C_ECHO_RQ:
            self._respond(ctx, _response(C_ECHO_RSP, msg_id, sop_class, "", 0x0000, ""))
        elif field == C_STORE_RQ:
            sop_instance = _ui(cmd, 0x1000)
            if data is None:
                status, comment = 0xC000, "C-STORE-RQ without a data set"
            elif part10 is None:  # _part10_start refused it: PS3.7 9.1.1.1.2
                status, comment = 0x0122, "SOP class is not the presentation context's"
            else:
                meta, digest = part10
                status, comment = self.store(b"".join([meta, *data]),  # the one copy
                                             sop_class, sop_instance, digest.hexdigest())
                if status in (0x0000, 0xB000, 0xB006, 0xB007):
                    self.stored += 1
            self._respond(ctx, _response(C_STORE_RSP, msg_id, sop_class, sop_instance, status,
                                         comment))
        elif field == C_FIND_RQ and self.find is not None:
            self._find(self.find, acc, ctx, msg_id, sop_class, data)
        elif field == C_CANCEL_RQ:
            return  # nothing pending to cancel (C-STORE is not cancellable, PS3.7 9.3.1)
        else:
            raise Abort(f"DIMSE command 0x{field:04X} is not served on a storage association")

    # -- C-FIND (PS3.7 9.1.2, 9.3.2) ------------------------------------------------------------
    def _find(self, find: Find, acc: Accepted, ctx: int, msg_id: int, sop_class: str,
              data: list[memoryview] | None) -> None:
        abstract, ts = acc.contexts[ctx]

        def rsp(status: int, comment: str = "", with_data: bool = False) -> bytes:
            return _response(C_FIND_RSP, msg_id, sop_class, "", status, comment,
                             DATA_SET_PRESENT if with_data else NO_DATA_SET)

        if sop_class != abstract:
            self._respond(ctx, rsp(0x0122, "SOP class is not the presentation context's"))
            return
        if data is None:
            self._respond(ctx, rsp(0xC000, "C-FIND-RQ without an identifier"))
            return
        raw = b"".join(data)
        cancel = _CancelWatch(self, msg_id)
        for status, comment, ds in find(lambda: decode_dataset(raw, ts), sop_class, cancel):
            if ds is None:
                self._respond(ctx, rsp(status, comment))
                return
            self._send_message(ctx, rsp(status, comment, True), encode_dataset(ds, ts))

    def _send_message(self, ctx: int, command: bytes, dataset: bytes) -> None:
        """A command and its data set as P-DATA-TF PDUs no longer than the peer takes."""
        limit = self.peer_max_pdu - 6 if self.peer_max_pdu else len(command) + len(dataset)
        out = bytearray()
        for ctrl, payload in ((0x03, command), (0x00, dataset)):
            pos = 0
            while True:
                frag = payload[pos:pos + max(limit, 1)]
                pos += len(frag)
                last = pos >= len(payload)
                pdv = _PDV.pack(len(frag) + 2, ctx, ctrl | (0x02 if last else 0)) + frag
                out += _HDR.pack(0x04, 0, len(pdv)) + pdv
                if last:
                    break
        self.sock.sendall(out)

    def _respond(self, ctx: int, command: bytes) -> None:
        pdv = _PDV.pack(len(command) + 2, ctx, 0x03) + command
        self.sock.sendall(_HDR.pack(0x04, 0, len(pdv)) + pdv)

    def _send_abort(self) -> None:
        try:
            self.sock.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00")
        except OSError:
            pass

    # -- reading ------------------------------------------------------------------------------
    def _read_pdu(self) -> tuple[int, memoryview]:
        head = self._recv_exact(6)
        ptype, _r, length = _HDR.unpack(head)
        if ptype not in (0x04, 0x05, 0x07, 0x01, 0x02, 0x03, 0x06):
            raise Abort(f"unrecognised PDU type 0x{ptype:02X}")
        if length > MAX_PDU_READ or (self.max_pdu and ptype == 0x04
                                      and length > self.max_pdu + 6 * 1024):
            raise Abort(f"PDU of {length} bytes exceeds the maximum length we announced")
        return ptype, self._recv_exact(length)

    def _recv_exact(self, n: int) -> memoryview:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise EOFError(f"connection closed after {got} of {n} bytes")
            got += k
        return view


def _pdvs(body: memoryview):  # noqa: ANN202 - generator of (context id, control, fragment)
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < 6:
            raise Abort("truncated presentation data value item")
        length, ctx, ctrl = _PDV.unpack_from(body, pos)
        if length < 2 or pos + 4 + length > end:
            raise Abort("presentation data value item length out of range")
        yield ctx, ctrl, body[pos + 6:pos + 4 + length]
        pos += 4 + length


# -- command sets: implicit VR little endian, group 0000 (PS3.7 6.3, E.1) --------------------
def _decode_command(raw: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    try:
        while pos < end:
            group, elem, length = _ELEM.unpack_from(raw, pos)
            pos += 8
            if group != 0x0000 or pos + length > end:
                raise Abort("malformed DIMSE command set")
            out[elem] = raw[pos:pos + length]
            pos += length
    except struct.error as exc:
        raise Abort(f"malformed DIMSE command set: {exc}") from exc
    return out


def _us(cmd: dict[int, bytes], elem: int) -> int:
    v = cmd.get(elem)
    return struct.unpack("<H", v[:2])[0] if v and len(v) >= 2 else -1


def _ui(cmd: dict[int, bytes], elem: int) -> str:
    return cmd.get(elem, b"").rstrip(b"\0 ").decode("ascii", "replace")


def _el(elem: int, value: bytes) -> bytes:
    return _ELEM.pack(0x0000, elem, len(value)) + value


def _uid(value: str) -> bytes:
    b = value.encode("ascii")
    return b + b"\0" if len(b) % 2 else b


def _response(field: int, msg_id: int, sop_class: str, sop_instance: str, status: int,
              comment: str, data_set: int = NO_DATA_SET) -> bytes:
    body = _el(0x0002, _uid(sop_class)) + _el(0x0100, struct.pack("<H", field))
    body += _el(0x0120, struct.pack("<H", msg_id & 0xFFFF))
    body += _el(0x0800, struct.pack("<H", data_set)) + _el(0x0900, struct.pack("<H", status))
    if comment:
        c = comment.encode("ascii", "replace")[:64]
        body += _el(0x0902, c + b" " if len(c) % 2 else c)
    if sop_instance:
        body += _el(0x1000, _uid(sop_instance))
    return _el(0x0000, struct.pack("<L", len(body))) + body


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, impl_uid: str,
              impl_version: str, source_ae: str) -> bytearray:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1), explicit VR LE."""
    def ex(elem: int, vr: bytes, value: bytes) -> bytes:
        if vr == b"OB":
            return struct.pack("<HH2sHL", 0x0002, elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value

    def text(v: str) -> bytes:
        b = v.encode("ascii", "replace")
        return b + b" " if len(b) % 2 else b

    body = (ex(0x0001, b"OB", b"\x00\x01") + ex(0x0002, b"UI", _uid(sop_class))
            + ex(0x0003, b"UI", _uid(sop_instance)) + ex(0x0010, b"UI", _uid(transfer_syntax))
            + ex(0x0012, b"UI", _uid(impl_uid)) + ex(0x0013, b"SH", text(impl_version[:16])))
    if source_ae:
        body += ex(0x0016, b"AE", text(source_ae[:16]))
    out = bytearray(128)
    out += b"DICM" + ex(0x0000, b"UL", struct.pack("<L", len(body))) + body
    return out


class _CancelWatch:
    """Whether a C-CANCEL-RQ for ``msg_id`` has arrived, read without waiting between two
    C-FIND responses.  Anything else the peer sends meanwhile is a protocol error (we accept no
    asynchronous operations): A-ABORT ends the association, the rest aborts it."""

    def __init__(self, assoc: StorageAssociation, msg_id: int) -> None:
        self.assoc = assoc
        self.msg_id = msg_id
        self.cancelled = False

    def __call__(self) -> bool:
        sock = self.assoc.sock
        while not self.cancelled and select.select([sock], [], [], 0)[0]:
            command = bytearray()
            while True:  # one command, perhaps over several PDUs
                ptype, body = self.assoc._read_pdu()
                if ptype == 0x07:
                    raise PeerAborted
                if ptype != 0x04:
                    raise Abort(f"PDU type 0x{ptype:02X} while a C-FIND was pending")
                last = False
                for _ctx, ctrl, frag in _pdvs(body):
                    if not ctrl & 0x01:
                        raise Abort("a data set arrived while a C-FIND was pending")
                    command += frag
                    last = bool(ctrl & 0x02)
                if last:
                    break
            cmd = _decode_command(bytes(command))
            if _us(cmd, 0x0100) != C_CANCEL_RQ:
                raise Abort(f"DIMSE command 0x{_us(cmd, 0x0100):04X} while a C-FIND was "
                            "pending (no asynchronous operations were negotiated)")
            if _us(cmd, 0x0120) == self.msg_id:
                self.cancelled = True
        return self.cancelled

