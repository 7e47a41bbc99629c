"""Uploads writes, one module per topic (import from the topic module):

- `receiving`: multipart uploads, and the limits every upload is checked against
- `tus`: the tus 1.0 protocol (creation, append, termination, expiry)
- `finalising`: staged bytes into STORAGES["attachments"]
- `retries`: retry runs over pending attachments
- `alerts`: the per-tenant finalisation health alert

State machine of an attachment (enforced by conditional UPDATEs that filter on the "from"
state):

    receiving ──(last byte, checksum ok)──► pending ──(finalise ok)──► stored
                                              │  ▲
                            (finalise fails)  ▼  │ (retry run / admin action)
                                   pending + next_retry_at ──(max attempts)──► failed

Services raise `core.errors.DomainError`; the API views turn it into HTTP (and the tus views
into tus status codes).
"""

__all__: list[str] = []
