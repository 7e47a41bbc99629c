"""A number on the dashboard and the admin list that shows the same rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figure:
    value: Any
    model: str  # "app_label.modelname" of the changelist behind the number
    filters: dict = field(default_factory=dict)  # its query string (existing list_filters)
    display: str | None = None  # how to show the value, when not str(value)
    label: str = ""
    is_count: bool = True  # the value is the number of rows its list shows (tests rely on it)
    url: str | None = None  # set by links.resolve() when the user may view that list

    def __str__(self) -> str:
        return self.display if self.display is not None else str(self.value)
