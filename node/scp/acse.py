"""Association control (ACSE): the node's peer table and limits, applied before negotiation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pynetdicom import evt
from pynetdicom.acse import ACSE

if TYPE_CHECKING:
    from node.scp.listener import Listener


class PeerCheckingACSE(ACSE):
    """ACSE that applies the node's peer table and limits before negotiating contexts."""

    def __init__(self, assoc, listener: Listener) -> None:  # noqa: ANN001
        super().__init__(assoc)
        self._listener = listener
        # Set only by our hook: if pynetdicom stops calling it, the handlers see False.
        self.peer_checked = False

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        address = self.assoc.requestor.address
        rejection = self._listener.check_association(calling, called, address)
        if rejection is None:
            self.peer_checked = True
            super()._negotiate_as_acceptor()
            return
        self.requestor.ae_title = calling
        self.send_reject(rejection.result, rejection.source, rejection.reason)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()
