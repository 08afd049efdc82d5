"""Pin every pynetdicom internal the listener relies on, so an upgrade fails here, loudly.

node.scp adapts private pynetdicom hooks (see node/scp/listener.py's docstring). Each test names one
internal and the shape we use; if pynetdicom renames or reshapes it, this fails in CI
instead of the listener silently running pynetdicom's own code. The handlers also fail
closed at run time (tests/integration/test_hostile_network.py shows that).
"""

from __future__ import annotations

import inspect

import pynetdicom
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dsutils import decode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import TRANSITION_TABLE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationServer, AssociationSocket, RequestHandler

from node import scp


def params(function) -> list[str]:  # noqa: ANN001
    return list(inspect.signature(function).parameters)


def test_pynetdicom_is_the_major_version_the_adapters_were_written_for():
    assert pynetdicom.__version__.startswith("3."), pynetdicom.__version__


def test_transfer_syntaxes_come_from_the_public_api():
    assert "1.2.840.10008.1.2.4.90" in pynetdicom.ALL_TRANSFER_SYNTAXES
    assert set(scp.PREFERRED_TRANSFER_SYNTAXES) <= set(scp.accepted_transfer_syntaxes())


def test_request_handler_creates_the_association_in_one_overridable_method():
    assert params(RequestHandler._create_association) == ["self"]
    source = inspect.getsource(RequestHandler.handle)
    assert "self._create_association()" in source and "assoc.start()" in source


def test_server_accepts_through_get_request_and_runs_service_actions():
    assert params(AssociationServer.get_request) == ["self"]
    assert "gc.collect" in inspect.getsource(AssociationServer.service_actions)
    assert "self.ssl_context.wrap_socket" in inspect.getsource(AssociationServer.get_request)


def test_dul_reads_a_pdu_as_recv_6_then_recv_length_after_ready():
    source = inspect.getsource(DULServiceProvider._read_pdu_data)
    assert "self.socket.recv(6)" in source and "self.socket.recv(pdu_length)" in source
    assert "self.socket.ready" in inspect.getsource(DULServiceProvider._is_transport_event)
    assert params(AssociationSocket.recv) == ["self", "nr_bytes"]
    assert isinstance(inspect.getattr_static(AssociationSocket, "ready"), property)
    assert "self.socket = client_socket" in inspect.getsource(AssociationSocket.__init__)


def test_invalid_pdu_event_evt19_aborts_an_established_association():
    assert TRANSITION_TABLE[("Evt19", "Sta6")] == "AA-8"
    assert TRANSITION_TABLE[("Evt17", "Sta13")] == "AR-5"
    assert "event_queue" in inspect.getsource(DULServiceProvider.__init__)


def test_acse_negotiates_as_acceptor_through_a_private_hook():
    assert params(ACSE._negotiate_as_acceptor) == ["self"]
    assert "self._negotiate_as_acceptor()" in inspect.getsource(ACSE.negotiate_association)
    assert params(ACSE.send_reject) == ["self", "result", "source", "diagnostic"]
    assert isinstance(inspect.getattr_static(ACSE, "requestor"), property)


def test_dimse_receives_p_data_through_receive_primitive():
    assert params(DIMSEServiceProvider.receive_primitive) == ["self", "primitive"]
    source = inspect.getsource(DIMSEServiceProvider.receive_primitive)
    assert "self.message.decode_msg(primitive" in source and "self.message = None" in source
    assert params(DIMSEServiceProvider.send_msg) == ["self", "primitive", "context_id"]
    message = DIMSEMessage()
    assert message.context_id is None
    assert message.encoded_command_set.tell() == 0 and message.data_set.tell() == 0
    assert params(decode)[:3] == ["bytestring", "is_implicit_vr", "is_little_endian"]
    assert P_DATA().presentation_data_value_list == []


def test_association_exposes_the_parts_the_adapters_replace():
    source = inspect.getsource(Association.__init__)
    for part in ("self.acse", "self.dimse", "self.dul"):
        assert part in source
    assert "self.dul.socket = socket" in inspect.getsource(Association.set_socket)
