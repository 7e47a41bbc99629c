"""OpenAPI: browser endpoints take the Bearer key (the `ApiKey` scheme of tenants.schema), or,
for sendBeacon, a publishable key as ?key=; input shapes render their own schema. Imported by
AssessmentsConfig.ready."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension


class BeaconKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "assessments.auth.BeaconKeyAuthentication"
    name = "BeaconKey"

    def get_security_requirement(self, auto_schema):
        # Either scheme works; "ApiKey" is registered by tenants.schema for every other view.
        return [{"ApiKey": []}, {"BeaconKey": []}]

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "query",
            "name": "key",
            "description": "navigator.sendBeacon cannot set headers: a publishable key (pk_…) "
            "in the query string. Secret keys are ignored there.",
        }


class ShapeSchema(OpenApiSerializerExtension):
    """An input `Shape` (assessments.shapes) documents itself from the table that validates."""

    target_class = "assessments.shapes.Shape"
    match_subclasses = True

    def get_name(self, auto_schema, direction):
        return self.target.name

    def map_serializer(self, auto_schema, direction):
        return self.target.openapi()
