"""Validation pieces shared by models and inputs of several apps."""

from django.db import models
from django.db.models import F, Func
from django.db.models.lookups import Exact

# A sane email: something@something.tld, no spaces (the database refuses anything else).
EMAIL_REGEX = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


def is_json_object(field: str) -> Exact:
    """CHECK helper: jsonb_typeof(field) = 'object'."""
    return Exact(Func(F(field), function="jsonb_typeof", output_field=models.CharField()), "object")
