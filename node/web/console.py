"""The admin console's pages: who is logged in, dead letters to retry, accounts to disable.

Each route names the least role it needs with :func:`node.web.auth.require`; what a page
shows to a role is a convenience, the server's refusal is the rule.
"""

from __future__ import annotations

from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from node.web.auth import Accounts, client_address, message_page, require
from storage import accounts
from storage.accounts import AccountError
from storage.audit import AuditEventId, Outcome, record
from storage.models import Transfer, TransferState, UserRole, utcnow
from storage.outbox import retry_dead


def console_routes(accounts_: Accounts, templates: Jinja2Templates) -> list[Route]:
    db = accounts_.db

    def overview(user_role: UserRole) -> dict:
        now = utcnow()
        with db.session() as session:
            dead = session.scalar(select(func.count(Transfer.id))
                                  .where(Transfer.state == TransferState.DEAD)) or 0
            users = (accounts.list_users(session) if user_role.allows(UserRole.ADMIN)
                     else [])
            return {"dead_letters": dead, "users": [
                {"name": u.name, "role": u.role, "disabled": u.disabled,
                 "locked_until": u.locked_until if u.locked_until and u.locked_until > now
                 else None, "last_login_at": u.last_login_at}
                for u in users]}

    @require(UserRole.VIEWER, accounts_, templates)
    async def console(request: Request) -> Response:
        user = request.state.user
        context = await run_in_threadpool(overview, user.role)
        return templates.TemplateResponse(request, "console.html", {
            "user": user, "csrf_token": user.csrf_token, "UserRole": UserRole,
            "notice": request.query_params.get("notice"), **context})

    def disable(actor: str, name: str, address: str | None) -> None:
        with db.session() as session:
            accounts.set_disabled(session, name, True)
            record(session, AuditEventId.APPLICATION_ACTIVITY, "user-disabled",
                   Outcome.SUCCESS, f'console user "{name}" disabled; their sessions ended',
                   peer_address=address, user_name=actor)

    @require(UserRole.ADMIN, accounts_, templates)
    async def disable_user(request: Request) -> Response:
        user = request.state.user
        name = request.path_params["name"]
        if name == user.name:
            return message_page(templates, request, 409, "Not disabled",
                                "You cannot disable your own account; another admin can.",
                                user)
        try:
            await run_in_threadpool(disable, user.name, name, client_address(request))
        except AccountError as exc:
            return message_page(templates, request, 404, "Not disabled", str(exc), user)
        return RedirectResponse(f"/console?notice=disabled+{name}", status_code=303)

    def retry(actor: str, address: str | None) -> int:
        with db.session() as session:
            count = retry_dead(session)
            record(session, AuditEventId.APPLICATION_ACTIVITY, "transfers-requeued",
                   Outcome.SUCCESS, f"{count} dead letters queued again (console)",
                   peer_address=address, user_name=actor)
        return count

    @require(UserRole.OPERATOR, accounts_, templates)
    async def retry_dead_letters(request: Request) -> Response:
        count = await run_in_threadpool(retry, request.state.user.name, client_address(request))
        return RedirectResponse(f"/console?notice=queued+{count}+dead+letters+again",
                                status_code=303)

    return [
        Route("/console", console, methods=["GET"]),
        Route("/console/users/{name}/disable", disable_user, methods=["POST"]),
        Route("/console/transfers/retry", retry_dead_letters, methods=["POST"]),
    ]
