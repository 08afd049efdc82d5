"""Who may read the node's studies over DICOMweb: one function, so that one place decides.

Today a reader is a console session of the viewer role or above, sent by the browser as
the session cookie. The cookie is SameSite=Strict, so it rides only on requests from the
node's own pages: OHIF served by the node at ``/viewer/`` (same origin) is authorised by
the login of the person using it, and another site's page cannot make a browser read
studies with it. Machine clients (a PACS, a research pipeline) will come with bearer
tokens; :func:`authorized_reader` is the hook for them: accept a token there, and every
QIDO-RS and WADO-RS route follows.

Without a reader the answer is 401, never a redirect to the login page: a DICOMweb client
is not a person who can fill in a form.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from node.web.auth import Accounts, client_address
from storage.models import UserRole

READ_ROLE = UserRole.VIEWER
REALM = 'Bearer realm="cxr-node DICOMweb"'

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Reader:
    """Who is reading, for the audit trail (PS3.15 A.5.3.2 UserID)."""

    name: str
    address: str | None


def authorized_reader(accounts: Accounts, request: Request) -> Reader | None:
    """The reader ``request`` speaks for, or None. Runs in a worker thread (database)."""
    user = accounts.current(request)
    if user is not None and user.role.allows(READ_ROLE):
        return Reader(user.name, client_address(request))
    return None


def unauthorized() -> Response:
    return PlainTextResponse("log in to the node's console (viewer role or above) to read "
                             "its studies\n", status_code=401,
                             headers={"WWW-Authenticate": REALM})


def reader_only(accounts: Accounts) -> Callable[[Endpoint], Endpoint]:
    """Guard a read-only DICOMweb endpoint: 401 without a reader, which the endpoint finds
    in ``request.state.reader``. ``required_role`` lets the app's route test see it."""
    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            reader = await run_in_threadpool(authorized_reader, accounts, request)
            if reader is None:
                return unauthorized()
            request.state.reader = reader
            return await endpoint(request)

        guarded.required_role = READ_ROLE  # type: ignore[attr-defined]
        return guarded

    return wrap
