"""Sign-in sessions, CSRF tokens, and the route dependencies that check them.

The session cookie is `labeler id : expiry : nonce : HMAC` under the server's secret; the CSRF token of a
session is the HMAC of the session's payload under another label, so it is bound to the session and a page
can carry it without the cookie ever being readable by scripts. The secret comes from RLHFKIT_SECRET or a
generated file beside the database, never a constant.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, Form, HTTPException, Request

from rlhfkit.errors import UsageError
from rlhfkit.feedback.store import Labeler, Store

COOKIE = "rlhfkit_session"
SESSION_SECONDS = 12 * 3600


MIN_SECRET_BYTES = 32


def load_secret(db_url: str) -> bytes:
    """RLHFKIT_SECRET (at least 32 bytes), or a random one kept in a file beside the database."""
    if os.environ.get("RLHFKIT_SECRET"):
        secret = os.environ["RLHFKIT_SECRET"].encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise UsageError(f"RLHFKIT_SECRET has {len(secret)} bytes; sessions need at least {MIN_SECRET_BYTES} "
                             "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
        return secret
    folder = Path(db_url.removeprefix("sqlite:///")).parent if db_url.startswith("sqlite:///") else Path.cwd()
    path = folder / ".rlhfkit-secret"
    if not path.exists():
        try:  # created readable by the owner only; a second process starting at once reads the first's
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        except FileExistsError:
            time.sleep(0.1)
    return path.read_text().strip().encode()


class Throttle:
    """Failed sign-ins, counted per account ("name:...") and per client address ("client:...", a looser limit: a
    shared address holds many people) over a sliding window: past the limit in `window` seconds, further
    attempts get 429 with Retry-After until the oldest failure ages out. A success clears the account's count.
    Kept in memory: a restart forgives, which costs an attacker a restart's worth of guesses at most."""

    def __init__(self, per_account: int = 10, per_client: int = 30, window: float = 300.0):
        self.limits, self.window = {"name": per_account, "client": per_client}, window
        self.failures: dict[str, list[float]] = {}

    def retry_after(self, *keys: str) -> int:
        """Seconds until these keys may try again (0: now)."""
        t = time.monotonic()
        wait = 0.0
        for key in keys:
            recent = [x for x in self.failures.get(key, []) if t - x < self.window]
            self.failures[key] = recent
            if len(recent) >= self.limits[key.partition(":")[0]]:
                wait = max(wait, self.window - (t - recent[0]))
        return int(wait) + 1 if wait else 0

    def failed(self, *keys: str) -> None:
        t = time.monotonic()
        if len(self.failures) > 10_000:  # many names sprayed: forget what has aged out, so memory stays bounded
            self.failures = {k: v for k, v in self.failures.items() if v and t - v[-1] < self.window}
        for key in keys:
            self.failures.setdefault(key, []).append(t)

    def succeeded(self, key: str) -> None:
        self.failures.pop(key, None)


@dataclass
class SignedIn:
    labeler: Labeler
    csrf: str  # the token state-changing requests of this session must carry
    session: str = ""  # the cookie's session token (sign-out ends it)


class Sessions:
    """Server-side sessions: the cookie holds a random token whose hash names a row in the store, so signing out,
    deactivating a labeler or rotating their token ends a session on its next request. The CSRF token is an HMAC
    of the session token under a key of its own, derived from the secret."""

    def __init__(self, key: bytes, store: Store):
        self.csrf_key = hmac.new(key, b"rlhfkit csrf", hashlib.sha256).digest()
        self.store = store

    def csrf(self, token: str) -> str:
        return hmac.new(self.csrf_key, token.encode(), hashlib.sha256).hexdigest()

    def new(self, labeler_id: int) -> str:
        """A cookie value for a fresh session of this labeler."""
        return self.store.start_session(labeler_id, SESSION_SECONDS)

    def of(self, request: Request) -> SignedIn | None:
        """The request's session, if its cookie names a live one of an active labeler."""
        token = request.cookies.get(COOKIE, "")
        if not token or len(token) > 100:
            return None
        lab = self.store.session_labeler(token)
        return SignedIn(lab, self.csrf(token), token) if lab is not None else None


# ---- dependencies: a route declares what it needs, and runs only if it holds ----

def same_origin(request: Request) -> None:
    """Refuse a form posted from another site (login CSRF: signing a browser in as someone else): browsers say
    where a request comes from in Origin and Sec-Fetch-Site."""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if (origin is not None and origin != own) or request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(403, "sign in from this site's own page")


def get_store(request: Request) -> Store:
    return request.app.state.store


def signed_in(request: Request) -> SignedIn:
    found = request.app.state.sessions.of(request)
    if found is None:
        raise HTTPException(401, "sign in first")
    return found


def admin(user: SignedIn = Depends(signed_in)) -> SignedIn:
    if user.labeler.role != "admin":
        raise HTTPException(403, "admins only")
    return user


def _check_csrf(user: SignedIn, token: str) -> SignedIn:
    if not hmac.compare_digest(token.encode(), user.csrf.encode()):
        raise HTTPException(403, "bad or missing CSRF token; reload the page")
    return user


def csrf_header(request: Request, user: SignedIn = Depends(signed_in)) -> SignedIn:
    """A signed-in request carrying its session's CSRF token in X-CSRF-Token (the JSON API)."""
    return _check_csrf(user, request.headers.get("X-CSRF-Token", ""))


def csrf_form(csrf: str = Form(""), user: SignedIn = Depends(signed_in)) -> SignedIn:
    """A signed-in form post carrying its session's CSRF token."""
    return _check_csrf(user, csrf)


def admin_form(csrf: str = Form(""), user: SignedIn = Depends(admin)) -> SignedIn:
    """An admin's form post carrying the session's CSRF token."""
    return _check_csrf(user, csrf)
