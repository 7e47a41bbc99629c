"""The /demo/ assessment page (HTML, not API): exercises static/atlas/client.js."""

from __future__ import annotations

import json

from django.conf import settings
from django.shortcuts import render


def demo_publishable_key() -> str | None:
    """ASSESSMENTS_DEMO_PUBLISHABLE_KEY, else the key `atlas_demo` wrote to var/ (the full key
    is never stored in the database, so the credentials file is the only other source)."""
    if settings.ASSESSMENTS_DEMO_PUBLISHABLE_KEY:
        return settings.ASSESSMENTS_DEMO_PUBLISHABLE_KEY
    path = settings.VAR_DIR / "demo-credentials.json"
    try:
        return json.loads(path.read_text()).get("publishable_key")
    except (OSError, ValueError):
        return None


QUESTIONS = [
    {"id": "energy", "text": "How is your energy after lunch?", "options": ["High", "Okay", "Low"]},
    {"id": "sleep", "text": "How many hours do you sleep?", "options": ["< 6", "6–8", "> 8"]},
    {"id": "water", "text": "Glasses of water a day?", "options": ["0–2", "3–6", "7+"]},
]


def demo_page(request):
    return render(
        request,
        "assessments/demo.html",
        {
            "publishable_key": demo_publishable_key(),
            "questions": QUESTIONS,
            "demo_mode": settings.ATLAS_DEMO_MODE,  # the live events panel (make run)
        },
    )
