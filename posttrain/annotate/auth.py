"""Login tokens and CSRF tokens.

A login token is 32 random bytes (``pt_`` + URL-safe base64); only its SHA-256 hash is stored, so a
copy of the database does not let anyone log in. A slow password hash is not needed: the token has
256 bits of entropy, nothing to guess.

CSRF uses the double-submit pattern: the server sets a random ``pt_csrf`` cookie (``SameSite=Strict``)
and every state-changing request made with the session cookie must repeat it, in the
``X-CSRF-Token`` header (JavaScript) or the ``csrf_token`` form field (the login form). A page on
another site can neither read the cookie nor set the header. Requests authenticated with an
``Authorization: Bearer`` header (scripts, the load test) carry no ambient credential and are exempt.

Sessions: logging in with a token starts a server-side session. The ``pt_session`` cookie holds a
random session id (32 bytes), never the token; the database keeps only its SHA-256 hash, its expiry
(``SESSION_HOURS`` after login, never after the token's own expiry) and when it was revoked.
Logout revokes it, so a copied cookie stops working; ``deactivate`` and ``reset_token`` revoke all
of an account's sessions. A token may carry an expiry (``token_days``); an expired token neither
logs in nor authenticates API calls.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from posttrain.annotate.db import ROLE_ADMIN, ROLE_ANNOTATOR, Account, LoginSession

SESSION_COOKIE = "pt_session"
CSRF_COOKIE = "pt_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSION_HOURS = 12.0  # a login lasts this long at most

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class AccountError(ValueError):
    """A bad account name, a duplicate, or an unknown account."""


def new_token() -> str:
    return "pt_" + secrets.token_urlsafe(32)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_secret(a: str | None, b: str | None) -> bool:
    """Constant-time comparison; ``None`` or empty never matches."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise AccountError(
            f"account name {name!r} must be 1-64 characters of letters, digits, '_', '.', '-'"
        )
    return name


def _now() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _expiry(token_days: float | None) -> datetime | None:
    if token_days is None:
        return None
    if not 0 < token_days <= 36500:
        raise AccountError(f"--token-days must be from 0 (exclusive) to 36500, got {token_days}")
    return _now() + timedelta(days=token_days)


def _account(db: Session, name: str) -> Account:
    account = db.scalar(select(Account).where(Account.name == name))
    if account is None:
        raise AccountError(f"no account named {name!r}")
    return account


def create_account(
    db: Session, name: str, role: str = ROLE_ANNOTATOR, *, token_days: float | None = None
) -> str:
    """Add an account and return its login token (shown once; only the hash is kept). With
    ``token_days`` the token stops working that many days from now."""
    check_name(name)
    if role not in (ROLE_ANNOTATOR, ROLE_ADMIN):
        raise AccountError(f"unknown role {role!r}")
    expires = _expiry(token_days)
    if db.scalar(select(Account).where(Account.name == name)) is not None:
        raise AccountError(f"account {name!r} already exists")
    token = new_token()
    db.add(Account(name=name, role=role, token_hash=hash_token(token), token_expires_at=expires))
    db.flush()
    return token


def reset_token(db: Session, name: str, *, token_days: float | None = None) -> str:
    """Give an account a new login token; the old one and every open session stop working."""
    expires = _expiry(token_days)
    account = _account(db, name)
    token = new_token()
    account.token_hash = hash_token(token)
    account.token_expires_at = expires
    revoke_sessions(db, account)
    db.flush()
    return token


def set_token_expiry(db: Session, name: str, expires_at: datetime | None) -> None:
    """Make an account's token expire at ``expires_at`` (``None``: never)."""
    _account(db, name).token_expires_at = expires_at
    db.flush()


def deactivate(db: Session, name: str) -> None:
    """Lock an account out: its token stops working and its open sessions end. Its votes stay."""
    account = _account(db, name)
    account.active = False
    revoke_sessions(db, account)
    db.flush()


def check_token(db: Session, token: str | None) -> tuple[Account | None, str]:
    """``(account, "")`` for a valid login token, else ``(None, why)``."""
    if not token:
        return None, "log in first"
    if len(token) > 200:
        return None, "this token is not valid"
    account = db.scalar(select(Account).where(Account.token_hash == hash_token(token)))
    if account is None or not account.active:
        return None, "this token is not valid"
    if account.token_expires_at is not None and as_utc(account.token_expires_at) <= _now():
        return None, "this token has expired; ask an admin for a new one"
    return account, ""


def account_for_token(db: Session, token: str | None) -> Account | None:
    """The active account holding ``token`` (not expired), or ``None``."""
    return check_token(db, token)[0]


def start_session(db: Session, account: Account, hours: float = SESSION_HOURS) -> str:
    """A new session for ``account``; returns its id (for the cookie; only the hash is stored).
    It ends after ``hours``, or when the account's token expires if that is sooner."""
    session_id = secrets.token_urlsafe(32)
    expires = _now() + timedelta(hours=hours)
    if account.token_expires_at is not None:
        expires = min(expires, as_utc(account.token_expires_at))
    db.add(LoginSession(id_hash=hash_token(session_id), account_id=account.id, expires_at=expires))
    db.flush()
    return session_id


def _live_session(db: Session, session_id: str | None) -> LoginSession | None:
    if not session_id or len(session_id) > 200:
        return None
    found = db.scalar(select(LoginSession).where(LoginSession.id_hash == hash_token(session_id)))
    if found is None or found.revoked_at is not None or as_utc(found.expires_at) <= _now():
        return None
    return found


def account_for_session(db: Session, session_id: str | None) -> Account | None:
    """The account of a live session (not expired, not revoked, account active), or ``None``."""
    found = _live_session(db, session_id)
    if found is None:
        return None
    account = db.get(Account, found.account_id)
    return account if account is not None and account.active else None


def end_session(db: Session, session_id: str | None) -> None:
    """Revoke a session (logout); unknown or ended sessions are ignored."""
    found = _live_session(db, session_id)
    if found is not None:
        found.revoked_at = _now()
        db.flush()


def revoke_sessions(db: Session, account: Account) -> None:
    db.execute(
        update(LoginSession)
        .where(LoginSession.account_id == account.id, LoginSession.revoked_at.is_(None))
        .values(revoked_at=_now())
    )
