"""Opaque SSE event ids: the global `seq`, encrypted, so one tenant's ids say nothing about how
many events other tenants published in between.

Deterministic authenticated encryption of the 8-byte seq (the synthetic-IV construction,
with HMAC-SHA256 as the PRF and keys derived from SECRET_KEY):
    tag = HMAC(k_tag, seq)[:8]          # looks random, and authenticates
    ct  = seq XOR HMAC(k_mask, tag)[:8]
    id  = base64url(tag || ct)          # 22 characters
Decoding recomputes the seq and checks the tag, so a forged, altered or foreign id is
refused (None), never read as a cursor. The same seq always gives the same id, so
Last-Event-ID resumes exactly from it, and publishing still takes nothing but the global seq.
Ids made with a key in SECRET_KEY_FALLBACKS keep resuming after a SECRET_KEY rotation.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import struct

from django.conf import settings

_SALT = b"atlas.outbox.realtime.event-id"
_ID_LENGTH = 22


@functools.lru_cache(maxsize=8)
def _keys(secret: str) -> tuple[hmac.HMAC, hmac.HMAC]:
    """Keyed HMAC states for the tag and the mask (copied per use: keying costs more)."""
    root = hmac.new(secret.encode(), _SALT, hashlib.sha256).digest()
    return (
        hmac.new(hmac.new(root, b"tag", hashlib.sha256).digest(), digestmod=hashlib.sha256),
        hmac.new(hmac.new(root, b"mask", hashlib.sha256).digest(), digestmod=hashlib.sha256),
    )


def _prf(keyed: hmac.HMAC, data: bytes) -> bytes:
    state = keyed.copy()
    state.update(data)
    return state.digest()[:8]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _encode_with(secret: str, seq: int) -> str:
    tag_key, mask_key = _keys(secret)
    plain = struct.pack(">Q", seq)
    tag = _prf(tag_key, plain)
    cipher = _xor(plain, _prf(mask_key, tag))
    return base64.urlsafe_b64encode(tag + cipher).rstrip(b"=").decode()


def _decode_with(secret: str, raw: bytes) -> int | None:
    tag_key, mask_key = _keys(secret)
    tag, cipher = raw[:8], raw[8:]
    plain = _xor(cipher, _prf(mask_key, tag))
    if not hmac.compare_digest(_prf(tag_key, plain), tag):
        return None
    return struct.unpack(">Q", plain)[0]


def encode(seq: int) -> str:
    return _encode_with(settings.SECRET_KEY, seq)


def decode(event_id: str) -> int | None:
    """The seq behind an id this server gave out, or None for anything else."""
    if len(event_id) != _ID_LENGTH or not event_id.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(event_id + "==")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 16 or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != event_id:
        return None  # not the one canonical spelling (base64 ignores the last char's low bits)
    for secret in [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]:
        seq = _decode_with(secret, raw)
        if seq is not None:
            return seq
    return None
