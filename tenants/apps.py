from core.ops import AtlasAppConfig


class TenantsConfig(AtlasAppConfig):
    default = True
    name = "tenants"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # CORS preflight carries no key: allow an origin that an active publishable key lists.
        from corsheaders.signals import check_request_enabled

        import tenants.schema  # noqa: F401 - registers the OpenAPI auth extension
        from tenants.cors import origin_allowed_for_preflight

        check_request_enabled.connect(origin_allowed_for_preflight, dispatch_uid="atlas_cors")

        # Row-level security: scopes for manage.py and django-q2 tasks; after every migrate
        # (and flush) the application roles exist and hold their grants.
        from django.db.models.signals import post_migrate

        from tenants import rls, rls_ddl

        rls.install()
        post_migrate.connect(
            rls_ddl.ensure_roles_after_migrate, sender=self, dispatch_uid="atlas_rls_roles"
        )
