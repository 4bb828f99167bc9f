"""Sign-in pages: password, second factor, authenticator enrolment, sign-out, invitations."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import quart
import trio
from quart import Blueprint, g, request
from werkzeug.sansio.response import Response as AnyResponse

from gateway import users
from gateway.http.ui import security, sessions, signin
from gateway.http.ui.security import state

GENERIC_FAILURE = (
    "Sign-in failed: the email or password is wrong, or the account is locked for a while "
    "after too many attempts."
)


INVITE_GONE = "This invitation link was used or has expired: ask for a new one."


def _policy() -> signin.Policy:
    settings = state().settings
    return signin.Policy(settings.lockout_after, settings.lockout_minutes)


def _safe_next(value: str | None) -> str:
    """Only a path on this site (no scheme, no host, no //): never an open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return quart.url_for("ui.inbox")
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return quart.url_for("ui.inbox")
    return value


async def _page(template: str, status: int = 200, **context: Any) -> quart.Response:
    security.pre_session()
    body = await quart.render_template(template, **context)
    return security.keep_pre_session(quart.Response(body, status=status))


def _signed_in(token: str, target: str) -> AnyResponse:
    response = quart.redirect(target, 303)
    security.session_cookie(response, token)
    security.clear_cookie(response, "pre")
    return response


def register(bp: Blueprint) -> None:
    @bp.get("/")
    async def home() -> Any:
        session: sessions.Session | None = g.session
        if session is None or session.stage != "active":
            return quart.redirect(quart.url_for("ui.login"))
        return quart.redirect(quart.url_for("ui.inbox"))

    @bp.get("/login")
    async def login() -> Any:
        session: sessions.Session | None = g.session
        if session is not None and session.stage == "active":
            return quart.redirect(_safe_next(request.args.get("next")))
        return await _page("ui/login.html", next=request.args.get("next", ""), error=None)

    @bp.post("/login")
    async def login_post() -> Any:
        form = await request.form
        ui = state()
        raw_email = form.get("email", "")[:320]
        password = form.get("password", "")[: users.MAX_PASSWORD + 1]
        try:
            email: str | None = users.normalise_email(raw_email)
        except users.UserError:
            email = None
        found = await ui.services.store.read("sign-in lookup", signin.credentials_txn, email)
        stored = found[1] if found else signin.dummy_hash()
        # Argon2id off the event loop; an unknown email costs the same as a known one.
        ok = await trio.to_thread.run_sync(users.verify_password, stored, password)
        step: signin.Step = await ui.services.store.write(
            "sign-in",
            signin.password_step_txn,
            email,
            found[0] if found else None,
            ok and found is not None,
            _policy(),
            security.client_ip(),
            request.headers.get("User-Agent"),
        )
        target = _safe_next(form.get("next"))
        if not step.ok or step.token is None:
            return await _page(
                "ui/login.html", status=401, next=form.get("next", ""), error=GENERIC_FAILURE
            )
        if step.stage == "active":
            return _signed_in(step.token, target)
        endpoint = "ui.login_code" if step.stage == "totp" else "ui.login_enrol"
        response = quart.redirect(quart.url_for(endpoint, next=form.get("next", "")), 303)
        security.session_cookie(response, step.token)
        security.clear_cookie(response, "pre")
        return response

    @bp.get("/login/code")
    async def login_code() -> Any:
        session: sessions.Session | None = g.session
        if session is None or session.stage != "totp":
            return quart.redirect(quart.url_for("ui.login"))
        return await _page("ui/code.html", next=request.args.get("next", ""), error=None)

    @bp.post("/login/code")
    async def login_code_post() -> Any:
        return await _second_step("totp")

    @bp.get("/login/enrol")
    async def login_enrol() -> Any:
        session: sessions.Session | None = g.session
        if session is None or session.stage != "enrol" or not session.pending:
            return quart.redirect(quart.url_for("ui.login"))
        return await _enrol_page(session, request.args.get("next", ""), None)

    @bp.post("/login/enrol")
    async def login_enrol_post() -> Any:
        return await _second_step("enrol")

    @bp.post("/logout")
    async def logout() -> Any:
        session: sessions.Session | None = g.session
        if session is not None:
            await state().services.store.write(
                "sign-out", signin.logout_txn, session.id_hash, session.actor
            )
        response = quart.redirect(quart.url_for("ui.login"), 303)
        security.clear_cookie(response, "session")
        return response

    @bp.get("/invite/<token>")
    async def invite(token: str) -> Any:
        email = await state().services.store.read("invitation", _invite_email, token)
        if email is None:
            return await security.error_page(INVITE_GONE, 404, "Invitation not valid")
        return await _page("ui/invite.html", email=email, token=token, error=None)

    @bp.post("/invite/<token>")
    async def invite_post(token: str) -> Any:
        form = await request.form
        password = form.get("password", "")[: users.MAX_PASSWORD + 1]
        ui = state()
        email = await ui.services.store.read("invitation", _invite_email, token)
        if email is None:
            return await security.error_page(INVITE_GONE, 404, "Invitation not valid")
        if password != form.get("password2", ""):
            return await _page(
                "ui/invite.html", 400, email=email, token=token, error="The passwords differ."
            )
        try:
            await ui.services.store.write(
                "accept invitation", signin.accept_invite_txn, token, password
            )
        except users.UserError as exc:
            return await _page("ui/invite.html", 400, email=email, token=token, error=str(exc))
        return quart.redirect(quart.url_for("ui.login"), 303)


async def _second_step(stage: str) -> Any:
    """POST of the code page ('totp') or the enrolment page ('enrol')."""
    session: sessions.Session | None = g.session
    if session is None or session.stage != stage or (stage == "enrol" and not session.pending):
        return quart.redirect(quart.url_for("ui.login"), 303)
    form = await request.form
    step: signin.Step = await state().services.store.write(
        f"sign-in {stage}",
        signin.second_step_txn,
        stage,
        session.id_hash,
        form.get("code", "")[:40],
        _policy(),
        security.client_ip(),
    )
    if step.ok and step.token:
        return _signed_in(step.token, _safe_next(form.get("next")))
    if step.locked:
        response = await _page("ui/login.html", status=401, next="", error=GENERIC_FAILURE)
        security.clear_cookie(response, "session")
        return response
    if stage == "enrol":
        return await _enrol_page(
            session, form.get("next", ""), "That code is wrong: check the device's clock.", 401
        )
    return await _page(
        "ui/code.html",
        status=401,
        next=form.get("next", ""),
        error="That code is wrong or was already used. Wait for the next one.",
    )


def _invite_email(db: Any, token: str) -> str | None:
    return sessions.invite_email(db.conn, token[:100])


async def _enrol_page(
    session: sessions.Session, next_path: str, error: str | None, status: int = 200
) -> quart.Response:
    pending = session.pending or {}
    return await _page(
        "ui/enrol.html",
        status=status,
        secret=pending.get("secret", ""),
        uri=pending.get("uri", ""),
        qr=qr_svg(pending.get("uri", "")),
        codes=pending.get("codes", []),
        next=next_path,
        error=error,
    )


def qr_svg(uri: str) -> str | None:
    """An SVG QR code of the otpauth URI when a QR library is installed (segno: BSD), else
    None and the page shows the secret to type in."""
    if not uri:
        return None
    try:
        import segno
    except ImportError:
        return None
    svg: str = segno.make(uri, error="m").svg_inline(scale=4)
    return svg
