"""Session tokens: the proof that a browser is the one that created the session it touches.

Shared by every app a browser links to its assessment session with the publishable key:
the session itself, its answers and submit (assessments), an upload attached to it
(uploads) and a checkout that unlocks its result (payments).

The publishable key sits in every visitor's page and session ids travel in analytics events
and URLs, so neither proves anything. When a session is created it gets a random token,
returned once (`sessionToken` in the 201 answer); only its SHA-256 is stored. With a
publishable key, every later read or write of that session, its answers and its submit must
present it (header `X-Session-Token`); secret keys (server side) need none.

A missing token is 403 `session_token_required`, a wrong one 403 `invalid_session_token`.
Another tenant's session stays 404 whatever is presented: the tenant check comes first.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from core.errors import DomainError, ErrorKind

HEADER = "X-Session-Token"
BODY_FIELD = "sessionToken"  # beacons (text/plain) cannot set headers
MAX_TOKEN_LENGTH = 200


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_issue() -> tuple[str, str]:
    """A new token and the digest to store (256 bits of randomness)."""
    raw = secrets.token_urlsafe(32)
    return raw, token_digest(raw)


@dataclass(frozen=True, slots=True)
class SessionProof:
    """What a publishable-key request presented for a session (None: nothing). Services
    take `proof=None` for trusted callers (secret keys, commands)."""

    token: str | None

    @property
    def digest(self) -> str | None:
        """The digest to match in SQL; None (matches no row) when absent or oversized."""
        if not self.token or len(self.token) > MAX_TOKEN_LENGTH:
            return None
        return token_digest(self.token)

    def check(self, stored_digest: str | None) -> None:
        """Raise the 403 for a session whose stored digest this proof does not match."""
        if not self.token:
            raise DomainError(
                "session_token_required",
                f"This session needs its token: send the sessionToken returned when it was "
                f"created as the {HEADER} header.",
                kind=ErrorKind.FORBIDDEN,
            )
        presented = self.digest
        if stored_digest is None or presented is None:
            raise _invalid()
        if not hmac.compare_digest(presented, stored_digest):
            raise _invalid()


def proof_from_headers(headers, *, is_secret: bool) -> SessionProof | None:
    """The proof a request presents in its X-Session-Token header; None for a secret key
    (server side: trusted)."""
    if is_secret:
        return None
    return SessionProof(headers.get(HEADER) or None)


def session_link_check(
    sessions, *, session_id, proof: SessionProof | None, missing: DomainError
) -> None:
    """Linking something (an upload, a checkout) to an assessment session: `sessions` is the
    tenant's own sessions (already scoped); `missing` is raised when the id is not among
    them; a publishable key's proof must match the session's token (None: a secret key)."""
    stored = list(sessions.filter(pk=session_id).values_list("token_hash", flat=True))
    if not stored:
        raise missing
    if proof is not None:
        proof.check(stored[0])


def _invalid() -> DomainError:
    return DomainError(
        "invalid_session_token",
        "The session token does not match this session.",
        kind=ErrorKind.FORBIDDEN,
    )
