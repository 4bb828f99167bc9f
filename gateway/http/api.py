"""The developer API on the public bind: /api/v1 (gateway.devapi; OpenAPI at
/api/v1/openapi.json). Every refusal is an RFC 9457 problem; nothing here answers a bare 500
(a bug becomes a logged 500 *problem*, and a test fuzzes for it)."""

from __future__ import annotations

import functools
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import quart
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from gateway.devapi import openapi, operations, privacy_requests
from gateway.devapi.config import FormConfig, api_config, parse_rate
from gateway.devapi.forms import check_submission, count_spam_txn, store_submission_txn
from gateway.devapi.keys import project_by_name
from gateway.devapi.operations import Target
from gateway.devapi.problems import Problem, invalid, problems_page
from gateway.devapi.state import retry_after, state_of
from gateway.devapi.web import (
    Fields,
    authenticate,
    client_address,
    idempotency_key,
    idempotent,
    json_response,
    page_args,
    problem_response,
    read_json,
)
from gateway.errors import StoreError
from gateway.privacy.requests import KINDS
from gateway.services import Services
from gateway.webhooks import WebhookRefused, read_body

log = logging.getLogger("gateway.api")

SUBSCRIBER = re.compile(r"^sub_[A-Za-z0-9_-]{16}$")
CODE_ID = re.compile(r"^otp_[A-Za-z0-9_-]{16}$")
CODE = re.compile(r"^[0-9]{4,10}$")
REQUEST_KIND = re.compile(f"^({'|'.join(KINDS)})$")
REQUEST_ID = re.compile(r"^[1-9][0-9]{0,17}$")
PREFIX = "/api/v1"
FORM_LIMIT = 32 * 1024
_TEMPLATE = re.compile(r"\{[^}]+\}")
_ROUTES = [
    (re.compile("^" + _TEMPLATE.sub("[^/]+", path) + "$"), sorted(m.upper() for m in ops))
    for path, ops in openapi.PATHS.items()
]


def _unrouted(request: quart.Request) -> quart.Response:
    """No operation of /api/v1 matches: 405 (with Allow) on a known path, else 404."""
    for pattern, methods in _ROUTES:
        if pattern.match(request.path):
            allow = ", ".join([*methods, *(["HEAD"] if "GET" in methods else []), "OPTIONS"])
            if request.method == "OPTIONS":
                return quart.Response("", status=204, headers={"Allow": allow})
            return problem_response(
                Problem(
                    "method-not-allowed",
                    f"{request.method[:20]} is not allowed here; use {', '.join(methods)}",
                    headers={"Allow": allow},
                )
            )
    return problem_response(
        Problem("not-found", f"no endpoint {request.path[:200]}; see {PREFIX}/openapi.json")
    )


def _target(fields: Fields, key_scopes: tuple[str, ...]) -> Target:
    subscriber = fields.text(
        "subscriber", pattern=SUBSCRIBER, shape="a subscriber id such as sub_AbCdEfGhIjKlMnOp"
    )
    channel = fields.text("channel", max_length=64, shape="a channel name")
    external_id = fields.text("external_id", max_length=128, shape="the platform's user id")
    given = {k for k, v in fields.data.items() if k in ("subscriber", "channel", "external_id")}
    if "subscriber" in given and given & {"channel", "external_id"}:
        fields.errors.append(
            {
                "field": "subscriber",
                "problem": "give subscriber, or channel + external_id, not both",
            }
        )
    elif "subscriber" not in given and given != {"channel", "external_id"}:
        fields.errors.append(
            {
                "field": "subscriber",
                "problem": "missing: give subscriber (an id from GET /api/v1/subscribers), or "
                "channel and external_id together",
            }
        )
    fields.check()
    if subscriber is None and "external_ids" not in key_scopes:
        raise Problem(
            "forbidden-scope",
            "addressing a person by channel + external_id needs the external_ids scope; give "
            "subscriber instead, or use a key with --scopes ...,external_ids",
        )
    return Target(subscriber, channel, external_id)


def blueprint(services: Services) -> quart.Blueprint:
    bp = quart.Blueprint("api", __name__)
    request = quart.request

    def on(method: str, path: str) -> Callable[[Any], Any]:
        # No automatic OPTIONS: the fallback below answers it with this path's methods only.
        return bp.route(path, methods=[method], provide_automatic_options=False)

    def scoped(
        scope: str,
    ) -> Callable[[Callable[..., Awaitable[quart.Response]]], Callable[..., Any]]:
        def wrap(view: Callable[..., Awaitable[quart.Response]]) -> Callable[..., Any]:
            @functools.wraps(view)
            async def checked(**kwargs: Any) -> quart.Response:
                key = await authenticate(services, request, scope)
                return await view(key, **kwargs)

            return checked

        return wrap

    @bp.before_request
    async def switched_on() -> None:
        if not api_config(services.config).enabled:
            raise Problem("not-found", "the developer API is switched off ([api] enabled = false)")

    @bp.after_app_request
    async def finish(response: quart.Response) -> quart.Response:
        # For the app's own routing errors too (a method no rule knows, such as QUERY).
        # The public app drains what a refusal left of the body (gateway.http.public).
        if not request.path.startswith(PREFIX):
            return response
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @on("GET", "/api/v1/openapi.json")
    async def document() -> quart.Response:
        return json_response(200, openapi.document_json())

    @on("GET", "/api/v1/problems")
    async def problems() -> quart.Response:
        return quart.Response(problems_page(), content_type="text/html; charset=utf-8")

    @on("POST", "/api/v1/notifications")
    @scoped("notify")
    async def send_notification(key: Any) -> quart.Response:
        idem = idempotency_key(request)
        body = await read_json(request)
        fields = Fields(body, ("subscriber", "channel", "external_id", "text"))
        text = fields.text("text", required=True, max_length=4096, shape="the message text")
        target = _target(fields, key.scopes)
        assert text is not None
        return await idempotent(
            services,
            key,
            idem,
            request,
            body,
            lambda: operations.notify(services, key, target, text, idem),
        )

    @on("GET", "/api/v1/notifications/<notification>")
    @scoped("notify")
    async def notification_status(key: Any, notification: str) -> quart.Response:
        status, answer = await operations.notification_status(services, key, notification)
        return json_response(status, answer)

    @on("POST", "/api/v1/otp")
    @scoped("otp")
    async def send_code(key: Any) -> quart.Response:
        idem = idempotency_key(request)
        body = await read_json(request)
        fields = Fields(body, ("subscriber", "channel", "external_id", "length"))
        length = fields.integer("length", low=4, high=10)
        target = _target(fields, key.scopes)
        return await idempotent(
            services,
            key,
            idem,
            request,
            body,
            lambda: operations.send_code(services, key, target, length),
        )

    @on("POST", "/api/v1/otp/verify")
    @scoped("otp")
    async def verify_code(key: Any) -> quart.Response:
        fields = Fields(await read_json(request), ("id", "code"))
        code_id = fields.text("id", required=True, pattern=CODE_ID, shape="the id POST /otp gave")
        code = fields.text("code", required=True, pattern=CODE, shape="the 4-10 digits")
        fields.check()
        assert code_id is not None and code is not None
        status, answer = await operations.verify_code(services, key, code_id, code)
        return json_response(status, answer)

    @on("POST", "/api/v1/privacy-requests")
    @scoped("privacy")
    async def privacy_request(key: Any) -> quart.Response:
        idem = idempotency_key(request)
        body = await read_json(request)
        fields = Fields(body, ("subscriber", "channel", "external_id", "kind", "note"))
        kind = fields.text(
            "kind",
            required=True,
            max_length=32,
            pattern=REQUEST_KIND,
            shape="one of " + ", ".join(KINDS),
        )
        note = fields.text("note", max_length=2000, shape="what the person asked, in words")
        target = _target(fields, key.scopes)
        assert kind is not None
        return await idempotent(
            services,
            key,
            idem,
            request,
            body,
            lambda: privacy_requests.create(services, key, target, kind, note, idem),
        )

    @on("GET", "/api/v1/privacy-requests/<request_id>")
    @scoped("privacy")
    async def privacy_request_status(key: Any, request_id: str) -> quart.Response:
        if not REQUEST_ID.match(request_id):
            raise invalid(
                [{"field": "id", "problem": "must be the id POST /api/v1/privacy-requests gave"}]
            )
        status, answer = await privacy_requests.status(services, key, int(request_id))
        return json_response(status, answer)

    @on("GET", "/api/v1/subscribers")
    @scoped("subscribers")
    async def subscribers(key: Any) -> quart.Response:
        after, limit = page_args(request, api_config(services.config).max_page)
        status, answer = await operations.subscribers_page(services, key, after, limit)
        return json_response(status, answer)

    @on("GET", "/api/v1/forms/<form>/submissions")
    @scoped("forms")
    async def submissions(key: Any, form: str) -> quart.Response:
        after, limit = page_args(request, api_config(services.config).max_page)
        status, answer = await operations.submissions_page(services, key, form, after, limit)
        return json_response(status, answer)

    def _form(name: str) -> tuple[FormConfig, str]:
        spec = api_config(services.config).forms.get(name)
        if spec is None:
            raise Problem("not-found", f"there is no form {name[:64]!r} here")
        origin = request.headers.get("Origin", "")
        if origin.lower() not in spec.allowed_origins:
            raise Problem(
                "origin-not-allowed",
                f"pages at {origin[:100] or '(no Origin header)'} may not post this form; its "
                f"owner lists allowed sites in [api.forms.{name}] allowed_origins",
            )
        return spec, origin

    @on("OPTIONS", "/api/v1/forms/<form>")
    async def form_preflight(form: str) -> quart.Response:
        _spec, origin = _form(form)
        asked = request.headers.get("Access-Control-Request-Method")
        if asked != "POST":
            raise invalid(
                [
                    {
                        "field": "header:Access-Control-Request-Method",
                        "problem": "a preflight asks for POST, the only method of a form",
                    }
                ]
            )
        return quart.Response(
            "",
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )

    @on("POST", "/api/v1/forms/<form>")
    async def submit_form(form: str) -> quart.Response:
        spec, origin = _form(form)
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        try:
            return await _submit(form, spec, origin, cors)
        except Problem as problem:
            problem.headers.update(cors)  # so the page's script can read why
            raise

    async def _submit(
        form: str, spec: FormConfig, origin: str, cors: dict[str, str]
    ) -> quart.Response:
        state = state_of(services)
        client = client_address(request, api_config(services.config).trusted_proxies)
        wait = max(
            state.form_clients.take((form, client), parse_rate(spec.rate)),
            state.form_origins.take((form, origin.lower()), parse_rate(spec.origin_rate)),
        )
        if wait > 0:
            raise Problem(
                "rate-limited",
                "too many submissions of this form; try again after Retry-After seconds",
                headers={"Retry-After": retry_after(wait)},
            )
        html_post = request.mimetype == "application/x-www-form-urlencoded"
        raw = await _form_body(html_post)
        checked = check_submission(spec, raw)
        if checked.spam:
            await services.store.write("form spam", count_spam_txn, form, origin)
        else:
            if checked.errors:
                raise invalid(checked.errors, "validation-failed")
            project = await services.store.read(
                "form project", lambda db: project_by_name(db.conn, spec.project)
            )
            if project is None:
                log.warning(
                    "form %s names project %r, which does not exist: create it with "
                    "`gateway api projects add %s`; submissions are refused",
                    form,
                    spec.project,
                    spec.project,
                )
                raise Problem("not-found", f"there is no form {form!r} here")
            await services.store.write(
                "form submission", store_submission_txn, project.id, form, checked.data, origin
            )
        if html_post and spec.redirect_to:
            return quart.Response("", status=303, headers={"Location": spec.redirect_to, **cors})
        return json_response(200, {"status": "received"}, cors)

    async def _form_body(html_post: bool) -> dict[str, Any]:
        if not html_post:
            return await read_json(request, FORM_LIMIT)
        try:
            body = await read_body(
                request, content_types=("application/x-www-form-urlencoded",), limit=FORM_LIMIT
            )
        except WebhookRefused:
            raise Problem(
                "payload-too-large", f"the form data is over {FORM_LIMIT} bytes"
            ) from None
        try:
            pairs = urllib.parse.parse_qsl(
                body.decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=200
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise invalid([{"field": "body", "problem": f"not form data ({exc})"}]) from None
        data: dict[str, Any] = {}
        for name, value in pairs:
            data.setdefault(name, value)
        return data

    @bp.route(
        "/api/v1/",
        defaults={"rest": ""},
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE"],
    )
    @bp.route(
        "/api/v1/<path:rest>",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE"],
    )
    async def fallback(rest: str) -> quart.Response:
        return _unrouted(request)

    @bp.app_errorhandler(NotFound)
    @bp.app_errorhandler(MethodNotAllowed)
    async def routing_error(exc: HTTPException) -> Any:
        # Methods the fallback route does not list never reach this blueprint.
        return _unrouted(request) if request.path.startswith(PREFIX) else exc

    @bp.errorhandler(Problem)
    async def problem(exc: Problem) -> quart.Response:
        return problem_response(exc)

    @bp.errorhandler(StoreError)
    async def unavailable(exc: StoreError) -> quart.Response:
        log.warning("api %s %s: store unavailable: %s", request.method, request.path, exc)
        return problem_response(
            Problem(
                "unavailable",
                "the gateway cannot store anything right now; nothing was done, retry later",
                headers={"Retry-After": "5"},
            )
        )

    @bp.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> quart.Response:
        code = exc.code or 400
        kind = {
            404: "not-found",
            405: "method-not-allowed",
            413: "payload-too-large",
            415: "unsupported-media-type",
        }.get(code, "invalid-request")
        return problem_response(Problem(kind, exc.description or exc.name))

    @bp.errorhandler(Exception)
    async def bug(exc: Exception) -> quart.Response:
        log.exception("api %s %s failed", request.method, request.path)
        return problem_response(
            Problem("internal", "the gateway failed to handle this request; its log has why")
        )

    return bp
