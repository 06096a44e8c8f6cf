"""The REST API, v1, on django-ninja: JSON in and out, bearer-token auth, errors as
`{"error": "..."}`. Its OpenAPI document is generated from the schemas and routes
(tenants/api/schemas.py, one module per resource) and served with its docs page."""

import functools
import json

from ninja import NinjaAPI, Swagger

from tenants.api import accounts, backups, databases, errors, meta
from tenants.api.auth import BearerToken
from tenants.api.parser import JsonObjectParser

DESCRIPTION = (
    "PostgreSQL databases, each its own server, reached through PgBouncer over TLS. JSON in "
    'and out; errors are `{"error": "..."}`. Get a token from `POST /api/v1/accounts` or '
    "`POST /api/v1/tokens` and send it as `Authorization: Bearer <token>`. Every API route "
    "answers 405 (with `Allow`) to a method it does not list, and unknown `/api/` paths "
    "answer a JSON 404. Another account's database answers 404."
)
TAGS = [
    {"name": "accounts", "description": "Sign up and tokens"},
    {"name": "databases", "description": "Create, inspect, sleep, wake, delete"},
    {"name": "backups", "description": "Backups, restores and logical exports"},
    {"name": "meta", "description": "This document and health"},
]


class Api(NinjaAPI):
    @functools.cache  # noqa: B019 (one API object, for the life of the process)
    def document_json(self) -> bytes:
        """The OpenAPI document, built once."""
        return json.dumps(self.get_openapi_schema(path_prefix="")).encode()


api = Api(
    title="dbaas API",
    version="1",
    description=DESCRIPTION,
    urls_namespace="api",
    # Both are operations of the meta router, so that the document lists them.
    openapi_url=None,
    docs_url=None,
    docs=Swagger(settings={"defaultModelsExpandDepth": 0}),
    auth=BearerToken(),
    parser=JsonObjectParser(),
    openapi_extra={"tags": TAGS},
)
errors.install(api)
for router in (accounts.router, databases.router, backups.router, meta.router):
    api.add_router("", router)
