"""DIMSE: bounded command sets, C-STORE commands checked first, data sets streamed to disk."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import P_DATA

from node.statuses import StoreStatus
from storage.files import IncomingFile, InvalidUID, validate_uid

if TYPE_CHECKING:
    from node.scp.listener import Listener

# A C-STORE-RQ command set is about 200 bytes (PS3.7 9.3.1.1); fragments past this bound
# are a sender that never sets the "last fragment" bit, not a command.
MAX_COMMAND_SET_BYTES = 16 * 1024
# Data set bytes we keep in memory: before any command (a protocol error) or for a message
# other than C-STORE (C-ECHO has none; other services are not offered). C-STORE data sets
# go to disk as they arrive and are bounded by max_instance_bytes instead.
MAX_BUFFERED_DATA_BYTES = 64 * 1024
_NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows (PS3.7 E.1)
_C_STORE_RQ = 0x0001


class _RefusedStore:
    """A C-STORE-RQ whose command we refused: its data set is drained, then we answer."""

    def __init__(self, context_id: int, message_id: int, sop_class_uid: str | None,
                 status: StoreStatus, reason: str) -> None:
        self.context_id = context_id
        self.message_id = message_id
        self.sop_class_uid = sop_class_uid
        self.status = status
        self.reason = reason


def _command_refusal(command: Dataset) -> tuple[StoreStatus, str] | None:
    """The status for a C-STORE-RQ command whose UIDs we cannot use (PS3.4 B.2.3), or None.

    pynetdicom itself aborts the association for a UID over 64 characters and passes an
    empty one on; both are the sender's error, answered with a status it can act on.
    """
    if command.get("CommandField") != _C_STORE_RQ:
        return None
    for keyword, name in (("AffectedSOPClassUID", "Affected SOP Class UID"),
                          ("AffectedSOPInstanceUID", "Affected SOP Instance UID")):
        value = str(command.get(keyword) or "").strip("\0 ")
        if not value:
            return StoreStatus.UID_MISSING, f"{name} is missing"
        if len(value) > 64:
            return StoreStatus.UID_INVALID, f"{name} has {len(value)} characters, over 64"
        try:
            validate_uid(value, name)
        except InvalidUID as exc:
            return StoreStatus.UID_INVALID, str(exc)
    return None


class StreamingDIMSE(DIMSEServiceProvider):
    """DIMSE provider that bounds what it buffers and drains each C-STORE data set to disk.

    Fragments are handed to pynetdicom one PDV at a time, so that the command set and any
    data kept in memory are checked against small bounds before they grow, and a C-STORE
    command is checked before its data set opens a file. It also carries the
    association's own state: the studies it holds open, and whether it ended with a release.
    """

    def __init__(self, assoc, listener: Listener) -> None:  # noqa: ANN001
        super().__init__(assoc)
        self._listener = listener
        self._pending: dict[int, IncomingFile] = {}
        self._refused: _RefusedStore | None = None
        self._stray_data_bytes = 0
        self._aborting = False
        self.held_studies: set[str] = set()
        self.established = False
        self.released = False

    def receive_primitive(self, primitive) -> None:  # noqa: ANN001 - P_DATA
        for context_id, data in primitive.presentation_data_value_list:
            if self._aborting:
                return
            try:
                self._receive_fragment(context_id, data)
            except Exception as exc:  # noqa: BLE001 - an undecodable stream from the peer
                # pynetdicom lets a broken command set escape and kill its DUL thread, which
                # would leave the connection hanging; abort it as for an invalid PDU.
                self._abort(f"undecodable DIMSE message ({type(exc).__name__}: {exc})")

    def _receive_fragment(self, context_id: int, data: bytes) -> None:
        if not data:
            self._abort("empty presentation data value")
            return
        control = data[0]
        is_command, is_last = bool(control & 0x01), bool(control & 0x02)
        if self._refused is not None:
            if is_command:
                self._abort("a command arrived before the data set of the last one ended")
            elif is_last:
                self._answer_refused()
            return
        message = self.message
        command_done = message is not None and message.context_id is not None
        if is_command:
            if command_done:
                self._abort("a command arrived before the data set of the last one ended")
                return
            buffered = message.encoded_command_set.tell() if message is not None else 0
            if buffered + len(data) - 1 > MAX_COMMAND_SET_BYTES:
                self._abort(f"command set fragments exceed {MAX_COMMAND_SET_BYTES} bytes "
                            f"without a last fragment")
                return
            if is_last and self._refuse_command(context_id, data, message):
                return
        elif not command_done:
            self._stray_data_bytes += len(data) - 1
            if self._stray_data_bytes > MAX_BUFFERED_DATA_BYTES:
                self._abort(f"more than {MAX_BUFFERED_DATA_BYTES} bytes of data set fragments "
                            f"before any command")
                return
        elif (not isinstance(message, C_STORE_RQ)
              and message.data_set.tell() + len(data) - 1 > MAX_BUFFERED_DATA_BYTES):
            self._abort(f"a data set of more than {MAX_BUFFERED_DATA_BYTES} bytes for a "
                        f"message that is not a C-STORE")
            return
        single = P_DATA()
        single.presentation_data_value_list = [[context_id, data]]
        super().receive_primitive(single)
        if is_command and is_last:
            self._stray_data_bytes = 0
        self._stream_to_disk()

    def _refuse_command(self, context_id: int, data: bytes, message) -> bool:  # noqa: ANN001
        """Check a complete C-STORE command before pynetdicom takes it; True if refused."""
        encoded = message.encoded_command_set.getvalue() if message is not None else b""
        command = decode(io.BytesIO(encoded + bytes(data[1:])), True, True)
        refusal = _command_refusal(command)
        if refusal is None:
            return False
        status, reason = refusal
        sop_class = str(command.get("AffectedSOPClassUID") or "").strip("\0 ")
        try:
            sop_class = validate_uid(sop_class, "Affected SOP Class UID")
        except InvalidUID:
            sop_class = None
        self.message = None
        self._stray_data_bytes = 0
        self._refused = _RefusedStore(context_id, int(command.MessageID), sop_class, status,
                                      reason)
        self._listener.policy.audit_store_refused(
            status, reason, self.assoc,
            str(command.get("AffectedSOPInstanceUID") or "").strip("\0 ")[:64] or None)
        if command.get("CommandDataSetType") == _NO_DATA_SET:
            self._answer_refused()
        return True

    def _answer_refused(self) -> None:
        """Send the refused C-STORE's response; its data set was dropped as it came."""
        refused, self._refused = self._refused, None
        response = C_STORE()
        response.MessageIDBeingRespondedTo = refused.message_id
        response.AffectedSOPClassUID = refused.sop_class_uid
        response.Status = int(refused.status)
        # PS3.7 C.4: Error Comment, at most 64 characters, tells the sender why.
        response.ErrorComment = refused.reason[:64]
        self.send_msg(response, refused.context_id)

    def _stream_to_disk(self) -> None:
        message = self.message
        if not isinstance(message, C_STORE_RQ) or message.context_id is None:
            return
        buffer = message.data_set.getbuffer()
        if len(buffer) == 0:
            del buffer
            return
        message_id = int(message.command_set.MessageID)
        incoming = self._pending.get(message_id)
        if incoming is None:
            cs = message.command_set
            [context] = [cx for cx in self.assoc.accepted_contexts
                         if cx.context_id == message.context_id]
            transfer_syntax = context.transfer_syntax[0]
            incoming = self._listener.new_incoming(
                str(cs.AffectedSOPClassUID), str(cs.AffectedSOPInstanceUID), transfer_syntax,
                self.assoc.requestor.ae_title)
            self._pending[message_id] = incoming
        incoming.write(buffer)
        del buffer
        message.data_set = io.BytesIO()

    def _abort(self, problem: str) -> None:
        """A-ABORT the association (as for an invalid PDU, Evt19), audited once."""
        if self._aborting:
            return
        self._aborting = True
        self.message = None
        self._refused = None
        self.discard_pending()
        self._listener.policy.audit_security_alert(
            "protocol-violation", f"{problem}: association aborted",
            self.assoc.requestor.address, str(self.assoc.requestor.ae_title or "").strip())
        # The guarded socket (node.scp.transport, which imports this module) then closes
        # the connection once our A-ABORT is out, rather than reading a flood to the end.
        close_after_abort = getattr(self.dul.socket, "close_after_abort", None)
        if close_after_abort is not None:
            close_after_abort(problem)
        self.dul.event_queue.put("Evt19")

    def take_pending(self, message_id: int) -> IncomingFile | None:
        return self._pending.pop(message_id, None)

    def discard_pending(self) -> None:
        """Delete data sets that never completed (the association ended mid-transfer)."""
        for incoming in self._pending.values():
            incoming.discard()
        self._pending.clear()
