"""The admin console's pages: the overview, transfers to retry, the settings, accounts.

Each route names the least role it needs with :func:`node.web.auth.require`; what a page
shows to a role is a convenience, the server's refusal is the rule.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from node.admin import transfer_rows
from node.web.auth import Accounts, client_address, message_page, require
from node.web.config_view import settings_rows
from node.web.overview import ThisProcess, site_overview
from storage import accounts
from storage.accounts import AccountError
from storage.audit import AuditEventId, Outcome, record
from storage.models import UserRole, utcnow
from storage.outbox import retry_dead

TRANSFERS_SHOWN = 200


def console_routes(accounts_: Accounts, templates: Jinja2Templates,
                   process: ThisProcess | None = None) -> list[Route]:
    db = accounts_.db
    settings = accounts_.settings
    process = process or ThisProcess()

    def overview(user_role: UserRole) -> dict:
        now = utcnow()
        figures = site_overview(settings, db, process)
        with db.session() as session:
            users = (accounts.list_users(session) if user_role.allows(UserRole.ADMIN)
                     else [])
            return {**figures, "users": [
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

    def transfer_list() -> dict:
        with db.session() as session:
            rows, counts = transfer_rows(session, TRANSFERS_SHOWN)
            return {"counts": counts, "shown": TRANSFERS_SHOWN, "transfers": [
                {"id": t.id, "state": str(t.state), "destination": t.destination,
                 "kind": kind, "attempts": t.attempts, "queued_at": t.queued_at,
                 "next_attempt_at": t.next_attempt_at, "last_attempt_at": t.last_attempt_at,
                 "last_error": t.last_error, "study_uid": study_uid, "sop_uid": sop_uid}
                for t, kind, sop_uid, study_uid in rows]}

    @require(UserRole.VIEWER, accounts_, templates)
    async def transfers(request: Request) -> Response:
        user = request.state.user
        context = await run_in_threadpool(transfer_list)
        return templates.TemplateResponse(request, "transfers.html", {
            "user": user, "csrf_token": user.csrf_token, "UserRole": UserRole,
            "notice": request.query_params.get("notice"), **context})

    def retry(actor: str, address: str | None, ids: list[int] | None) -> int:
        with db.session() as session:
            count = retry_dead(session, ids)
            which = f"ids {', '.join(map(str, ids))}" if ids else "all"
            record(session, AuditEventId.APPLICATION_ACTIVITY, "transfers-requeued",
                   Outcome.SUCCESS, f"{count} dead letters queued again ({which}; console)",
                   peer_address=address, user_name=actor)
        return count

    @require(UserRole.OPERATOR, accounts_, templates)
    async def retry_dead_letters(request: Request) -> Response:
        """Retry one (``one``), every dead letter (``scope=all``) or the ticked ones (``ids``).

        Nothing chosen is refused rather than read as "all": an empty selection must not
        re-queue every dead letter of the site.
        """
        user = request.state.user
        form = await request.form()
        # The button pressed decides: a row's Retry, Retry every, or Retry selected.
        every = form.get("scope") == "all" and not form.get("one")
        chosen = [] if every else [form["one"]] if form.get("one") else form.getlist("ids")
        try:
            ids = [int(str(value)) for value in chosen]
        except ValueError:
            return message_page(templates, request, 400, "Not retried",
                                "A transfer id is not a number; nothing was queued.", user)
        if not ids and not every:
            return message_page(templates, request, 400, "Not retried",
                                "No dead letter was chosen; nothing was queued.", user)
        count = await run_in_threadpool(retry, user.name, client_address(request), ids or None)
        back = "/console" if form.get("back") == "overview" else "/console/transfers"
        return RedirectResponse(f"{back}?notice=queued+{count}+dead+letters+again",
                                status_code=303)

    @require(UserRole.VIEWER, accounts_, templates)
    async def configuration(request: Request) -> Response:
        return templates.TemplateResponse(request, "config.html", {
            "user": request.state.user, "rows": settings_rows(settings)})

    return [
        Route("/console", console, methods=["GET"]),
        Route("/console/users/{name}/disable", disable_user, methods=["POST"]),
        Route("/console/transfers", transfers, methods=["GET"]),
        Route("/console/transfers/retry", retry_dead_letters, methods=["POST"]),
        Route("/console/config", configuration, methods=["GET"]),
    ]
