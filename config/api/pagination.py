"""Cursor pagination for every list endpoint: stable under inserts, cheap on big tables."""

from rest_framework.pagination import CursorPagination as _CursorPagination


class CursorPagination(_CursorPagination):
    ordering = "-created_at"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200
