"""The FastAPI app: login, the annotator page, the admin dashboard and their JSON API.

Pages are static HTML + JavaScript from ``posttrain/assets/annotate``; all model text travels as
JSON and the page writes it with ``textContent``, never as HTML. A Content-Security-Policy without
inline scripts backs this up.

Authentication: ``Authorization: Bearer TOKEN`` (scripts) or the ``pt_session`` cookie set by the
login form (browsers; ``HttpOnly``, ``SameSite=Strict``), which holds a server-side session id, not
the token (logout revokes it; see ``auth``). Cookie-authenticated requests that change state must
carry the CSRF token and, if they send ``Origin``, come from this very origin (scheme included). No
credential, an unknown or expired one -> 401; the wrong role -> 403; another annotator's task or
an id the database cannot hold -> 404 (we do not confirm that it exists). Every route checks the
credential before it reads a request body, and bodies over ``MAX_BODY_BYTES`` are refused (413)
before they are read whole.
"""

from __future__ import annotations

import hashlib
import html
import json
from pathlib import Path

import anyio.from_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from posttrain.annotate import auth, markdown, service
from posttrain.annotate.db import ROLE_ADMIN, ROLE_ANNOTATOR, Account, session
from posttrain.annotate.export import MODES, preference_records, to_jsonl

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "annotate"
DEFAULT_GUIDELINES = ASSETS / "guidelines.md"
MAX_BODY_BYTES = 64 * 1024  # a vote, a login form or an admin request is far smaller
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _BodyLimit:
    """ASGI middleware: a request whose body is over ``limit`` bytes gets 413 and reaches no route.
    A declared ``Content-Length`` is judged before anything is read (the server holds the body to
    it); a body without one (chunked) is read here, at most ``limit + 1`` bytes, and handed on
    whole only when it fits."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def refuse(self, scope, receive, send):
        response = Response(
            json.dumps({"detail": f"request body over {self.limit} bytes"}),
            status_code=413,
            media_type="application/json",
            headers={**_HEADERS, "Connection": "close"},
        )
        await response(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.limit:
                return await self.refuse(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await self.refuse(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


def read_json_object(request: Request) -> dict:
    """The request's JSON object body, read from a sync route (FastAPI runs those in a worker
    thread); call it only after the credential check. Not a JSON object -> 422."""
    body = anyio.from_thread.run(request.body)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise HTTPException(422, "the request body must be a JSON object") from None
    if not isinstance(value, dict):
        raise HTTPException(422, "the request body must be a JSON object")
    return value


def create_app(
    engine: Engine,
    *,
    guidelines: str | None = None,
    secure_cookies: bool = False,
    session_hours: float = auth.SESSION_HOURS,
) -> FastAPI:
    """The app over ``engine``. ``guidelines`` is Markdown text (default: the posttrain guidelines);
    ``secure_cookies`` adds the ``Secure`` flag (use it behind HTTPS); a login lasts
    ``session_hours`` at most."""
    app = FastAPI(title="posttrain annotate", docs_url=None, redoc_url=None, openapi_url=None)
    guidelines_html = markdown.render(
        guidelines if guidelines is not None else DEFAULT_GUIDELINES.read_text(encoding="utf-8")
    )
    # which version of the guidelines an annotator acknowledged (the page opens new ones at login)
    guidelines_version = hashlib.sha256(guidelines_html.encode("utf-8")).hexdigest()
    login_page = (ASSETS / "login.html").read_text(encoding="utf-8")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)  # outermost: before anything reads
    app.mount("/static", StaticFiles(directory=ASSETS / "static"), name="static")

    def set_cookie(response: Response, name: str, value: str, *, http_only: bool) -> None:
        response.set_cookie(
            name, value, httponly=http_only, samesite="strict", secure=secure_cookies, path="/"
        )

    # -- authentication -------------------------------------------------------------------------

    def credential(request: Request) -> tuple[str | None, bool]:
        """(login token, False) from the header or (session id, True) from the cookie."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip(), False
        return request.cookies.get(auth.SESSION_COOKIE), True

    def check_csrf(request: Request) -> None:
        origin = request.headers.get("origin")
        host = request.headers.get("host")
        allowed = {f"{request.url.scheme}://{host}"}
        if secure_cookies:  # behind an HTTPS proxy the app itself may see http
            allowed.add(f"https://{host}")
        if origin is not None and origin not in allowed:
            raise HTTPException(403, "cross-origin request refused")
        if not auth.same_secret(
            request.headers.get(auth.CSRF_HEADER), request.cookies.get(auth.CSRF_COOKIE)
        ):
            raise HTTPException(403, "missing or wrong CSRF token; reload the page")

    def require(db, request: Request, role: str | None) -> Account:
        """The signed-in account, which must have ``role`` (``None``: any role)."""
        secret, from_cookie = credential(request)
        if from_cookie:
            account = auth.account_for_session(db, secret)
            detail = "log in first" if not secret else "your session has ended; log in again"
        else:
            account, detail = auth.check_token(db, secret)
        if account is None:
            raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})
        if role is not None and account.role != role:
            raise HTTPException(403, f"this needs an {role} account")
        if from_cookie and request.method not in _SAFE_METHODS:
            check_csrf(request)
        return account

    def page_account(request: Request) -> Account | None:
        with session(engine) as db:
            return auth.account_for_session(db, request.cookies.get(auth.SESSION_COOKIE))

    # -- pages ----------------------------------------------------------------------------------

    def render_login(request: Request, error: str = "", status: int = 200) -> HTMLResponse:
        csrf = request.cookies.get(auth.CSRF_COOKIE) or auth.new_csrf_token()
        body = login_page.replace("{{csrf}}", html.escape(csrf)).replace(
            "{{error}}", html.escape(error)
        )
        response = HTMLResponse(body, status_code=status)
        set_cookie(response, auth.CSRF_COOKIE, csrf, http_only=False)
        return response

    def home_of(account: Account) -> str:
        return "/admin" if account.role == ROLE_ADMIN else "/annotate"

    @app.get("/", include_in_schema=False)
    def root(request: Request):
        account = page_account(request)
        return RedirectResponse(home_of(account) if account else "/login", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return render_login(request)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        if not auth.same_secret(
            str(form.get(auth.CSRF_FIELD, "")), request.cookies.get(auth.CSRF_COOKIE)
        ):
            return render_login(request, "Your session expired; please try again.", 403)
        token = str(form.get("token", "")).strip()

        def start() -> tuple[Account | None, str]:
            with session(engine) as db:
                account, problem = auth.check_token(db, token)
                if account is None:
                    return None, problem
                session_id = auth.start_session(db, account, session_hours)
                db.commit()
                return account, session_id

        account, session_id = await run_in_threadpool(start)
        if account is None:
            message = "That token has expired." if "expired" in session_id else ""
            return render_login(request, message or "That token is not valid.", 401)
        response = RedirectResponse(home_of(account), status_code=303)
        set_cookie(response, auth.SESSION_COOKIE, session_id, http_only=True)
        set_cookie(response, auth.CSRF_COOKIE, auth.new_csrf_token(), http_only=False)
        return response

    @app.post("/logout")
    async def logout(request: Request):
        form = await request.form()
        if not auth.same_secret(
            str(form.get(auth.CSRF_FIELD, "")), request.cookies.get(auth.CSRF_COOKIE)
        ):
            raise HTTPException(403, "missing or wrong CSRF token")

        def end() -> None:
            with session(engine) as db:
                auth.end_session(db, request.cookies.get(auth.SESSION_COOKIE))
                db.commit()

        await run_in_threadpool(end)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/")
        return response

    def page(request: Request, role: str, filename: str):
        account = page_account(request)
        if account is None:
            return RedirectResponse("/login", status_code=303)
        if account.role != role:
            return HTMLResponse("<!doctype html><p>This page needs another account.</p>", 403)
        return FileResponse(ASSETS / filename, media_type="text/html")

    @app.get("/annotate", include_in_schema=False)
    def annotate_page(request: Request):
        return page(request, ROLE_ANNOTATOR, "annotate.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page(request: Request):
        return page(request, ROLE_ADMIN, "admin.html")

    # -- annotator API --------------------------------------------------------------------------

    @app.get("/api/guidelines")
    def get_guidelines(request: Request):
        with session(engine) as db:
            require(db, request, None)
        return {
            "html": guidelines_html,
            "aspects": service.ASPECTS,
            "max_confidence": service.MAX_CONFIDENCE,
        }

    @app.get("/api/me")
    def me(request: Request):
        with session(engine) as db:
            account = require(db, request, ROLE_ANNOTATOR)
            return {
                "name": account.name,
                "progress": service.progress(db, account),
                "guidelines_read": service.guidelines_read(db, account, guidelines_version),
            }

    @app.post("/api/guidelines/read")
    def guidelines_read(request: Request):
        """The annotator acknowledged the guidelines being served."""
        with session(engine) as db:
            account = require(db, request, ROLE_ANNOTATOR)
            service.mark_guidelines_read(db, account, guidelines_version)
            return {"read": True}

    @app.get("/api/next")
    def next_task(request: Request):
        with session(engine) as db:
            account = require(db, request, ROLE_ANNOTATOR)
            assignment = service.next_assignment(db, account)
            view = None if assignment is None else service.task_view(db, account, assignment.id)
            return {"task": view, "progress": service.progress(db, account)}

    @app.get("/api/recent")
    def recent(request: Request):
        """The annotator's answered tasks, latest first (the page's "previous")."""
        with session(engine) as db:
            account = require(db, request, ROLE_ANNOTATOR)
            return {"answers": service.recent_answers(db, account)}

    @app.get("/api/tasks/{assignment_id}")
    def get_task(assignment_id: int, request: Request):
        with session(engine) as db:
            account = require(db, request, ROLE_ANNOTATOR)
            try:
                return service.task_view(db, account, assignment_id)
            except service.NotFound as exc:
                raise HTTPException(404, str(exc)) from None

    @app.post("/api/tasks/{assignment_id}/vote")
    def vote(assignment_id: int, request: Request):
        with session(engine) as db:
            account = require(db, request, ROLE_ANNOTATOR)
            payload = read_json_object(request)
            try:
                summary, created = service.record_vote(db, account, assignment_id, payload)
            except service.NotFound as exc:
                raise HTTPException(404, str(exc)) from None
            except service.Conflict as exc:
                raise HTTPException(409, str(exc)) from None
            except service.Invalid as exc:
                raise HTTPException(422, str(exc)) from None
            # a replayed key answers with the vote already stored under it: nothing new is stored
            return {"stored": created, "duplicate": not created, **summary}

    @app.post("/api/tasks/{assignment_id}/skip")
    def skip(assignment_id: int, request: Request):
        with session(engine) as db:
            account = require(db, request, ROLE_ANNOTATOR)
            try:
                status = service.skip(db, account, assignment_id)
            except service.NotFound as exc:
                raise HTTPException(404, str(exc)) from None
            return {"status": status}

    # -- admin API ------------------------------------------------------------------------------

    @app.get("/api/admin/summary")
    def summary(request: Request):
        with session(engine) as db:
            require(db, request, ROLE_ADMIN)
            return service.dashboard(db)

    @app.post("/api/admin/annotators")
    def add_annotator(request: Request):
        with session(engine) as db:
            require(db, request, ROLE_ADMIN)
            payload = read_json_object(request)
            name = payload.get("name")
            try:
                token = auth.create_account(db, str(name or ""), ROLE_ANNOTATOR)
                db.commit()
            except auth.AccountError as exc:
                raise HTTPException(422, str(exc)) from None
            return {"name": name, "token": token}

    @app.post("/api/admin/assign")
    def assign(request: Request):
        with session(engine) as db:
            require(db, request, ROLE_ADMIN)
            payload = read_json_object(request)
            overlap, seed = payload.get("overlap", 1), payload.get("seed", 0)
            names = payload.get("annotators")
            if not isinstance(overlap, int) or not isinstance(seed, int):
                raise HTTPException(422, '"overlap" and "seed" must be integers')
            if names is not None and not (
                isinstance(names, list) and all(isinstance(n, str) for n in names)
            ):
                raise HTTPException(422, '"annotators" must be a list of names')
            try:
                before = service.assignment_counts(db)
                count = service.assign(db, names, overlap=overlap, seed=seed)
                after = service.assignment_counts(db)
                db.commit()
            except service.NotFound as exc:
                raise HTTPException(404, str(exc)) from None
            except service.Invalid as exc:
                raise HTTPException(422, str(exc)) from None
            # "gold" / "regular": how many of the new assignments are screening items (an
            # assignment that added only gold tasks means there were no new tasks to hand out)
            return {
                "assigned": count,
                "gold": after["gold"] - before["gold"],
                "regular": after["regular"] - before["regular"],
            }

    @app.get("/api/admin/quality")
    def quality_view(request: Request):
        with session(engine) as db:
            require(db, request, ROLE_ADMIN)
            return service.quality_report(db)

    @app.get("/api/admin/export")
    def export(request: Request, mode: str = "all", include_gold: str = "false"):
        with session(engine) as db:
            require(db, request, ROLE_ADMIN)  # before looking at the parameters
            if mode not in MODES:
                raise HTTPException(422, f"mode must be one of {', '.join(MODES)}")
            if include_gold.lower() not in ("true", "false", "1", "0"):
                raise HTTPException(422, "include_gold must be true or false")
            include_gold = include_gold.lower() in ("true", "1")
            records = preference_records(db, mode, include_gold=include_gold)
        return Response(
            to_jsonl(records),
            media_type="application/jsonl",
            headers={"Content-Disposition": f'attachment; filename="preferences-{mode}.jsonl"'},
        )

    app.state.engine = engine
    return app
