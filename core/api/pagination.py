"""Cursor pagination for every list endpoint: stable under inserts, cheap on big tables."""

from rest_framework.pagination import CursorPagination as _CursorPagination


class CursorPagination(_CursorPagination):
    ordering = "-created_at"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200


def paginated(serializer_class):
    """OpenAPI shape of a CursorPagination page of `serializer_class` (for APIView.get)."""
    from drf_spectacular.utils import inline_serializer
    from rest_framework import serializers

    return inline_serializer(
        name=f"Paginated{serializer_class.__name__}",
        fields={
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer_class(many=True),
        },
    )
