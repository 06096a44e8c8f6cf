"""What describes the API and the platform: the CA clients trust, the OpenAPI
document and its page, and the health check."""

from django.http import HttpRequest, HttpResponse
from ninja import Router, Status

from dbaas.views import health_checks
from tenants.api.answers import operation
from tenants.api.schemas import Health
from tenants.selectors import tls_ca_pem

router = Router(tags=["meta"])


def media(description: str, media_type: str, schema: dict) -> dict:
    return {"description": description, "content": {media_type: {"schema": schema}}}


@router.get(
    "api/v1/ca.pem",
    url_name="ca",  # the credentials page links to it
    **operation(
        "getCaCertificate",
        "The CA that signs the pooler's certificates",
        {
            200: media(
                "PEM; clients that verify certificates trust this (`sslrootcert=` in libpq, "
                "`NODE_EXTRA_CA_CERTS` for node-postgres)",
                "application/x-pem-file",
                {"type": "string"},
            )
        },
        auth=False,
    ),
)
def get_ca_certificate(request: HttpRequest):
    response = HttpResponse(tls_ca_pem(), content_type="application/x-pem-file")
    response["Content-Disposition"] = 'inline; filename="dbaas-ca.pem"'
    return response


@router.get(
    "api/v1/openapi.json",
    url_name="openapi-json",  # where the docs page finds it
    **operation(
        "getOpenApi",
        "This document",
        {200: media("OpenAPI 3.1", "application/json", {"type": "object"})},
        auth=False,
    ),
)
def get_openapi(request: HttpRequest):
    from tenants.api import api  # the API this router is part of (it imports us)

    return HttpResponse(api.document_json(), content_type="application/json")


@router.get(
    "api/docs",
    **operation(
        "getDocs",
        "This document as a web page",
        {200: media("HTML (Swagger UI, from this server)", "text/html", {"type": "string"})},
        auth=False,
    ),
)
def get_docs(request: HttpRequest):
    from tenants.api import api  # the API this router is part of (it imports us)

    return api.docs.render_page(request, api)


@router.get(
    "healthz",
    **operation(
        "health",
        "Health of the control plane: its database and Redis",
        {200: (Health, "All answer"), 503: (Health, "Something does not answer")},
        auth=False,
    ),
)
def health(request: HttpRequest):
    checks = health_checks()
    healthy = all(value == "ok" for value in checks.values())
    answer = Health(status="ok" if healthy else "unhealthy", checks=checks)  # type: ignore[arg-type]
    return Status(200 if healthy else 503, answer)
