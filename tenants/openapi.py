"""The REST API's OpenAPI 3.1 document, built as a plain dict.

It is served at GET /api/v1/openapi.json and rendered as a page at GET /api/docs
(tenants/templates/tenants/api_docs.html). It describes what tenants/api.py really
does: every status code an operation can answer, request bodies whose unknown
fields are ignored (so `additionalProperties` is allowed), and response objects
with exactly the fields the serializers write. tests/test_openapi.py checks it
against the URL resolver and fuzzes the running app with schemathesis.
"""

import copy
import functools
import re

from django.utils.html import escape
from django.utils.safestring import mark_safe

from tenants.services import NAME_RE

# -- schema helpers ---------------------------------------------------------------------


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def string(description: str = "", **extra) -> dict:
    return _described({"type": "string", **extra}, description)


def integer(description: str = "", **extra) -> dict:
    return _described({"type": "integer", **extra}, description)


def timestamp(description: str = "") -> dict:
    return string(description, format="date-time")


def enum(values: list[str], description: str = "") -> dict:
    return _described({"type": "string", "enum": list(values)}, description)


def nullable(schema: dict) -> dict:
    """The same schema, or JSON null."""
    schema = dict(schema)
    kind = schema["type"]
    schema["type"] = [kind, "null"]
    if "enum" in schema:
        schema["enum"] = [*schema["enum"], None]
    return schema


def array_of(items: dict, description: str = "") -> dict:
    return _described({"type": "array", "items": items}, description)


def response_object(properties: dict, description: str = "") -> dict:
    """An object the API writes: every field always present, no others."""
    return _described(
        {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        },
        description,
    )


def request_object(properties: dict, required: tuple[str, ...] = (), description: str = "") -> dict:
    """A JSON object the API reads: fields it does not know are ignored."""
    schema = {"type": "object", "properties": properties, "additionalProperties": True}
    if required:
        schema["required"] = list(required)
    return _described(schema, description)


def _described(schema: dict, description: str) -> dict:
    return {**schema, "description": description} if description else schema


# -- operation helpers -------------------------------------------------------------------


def json_body(schema: dict, description: str = "", required: bool = True) -> dict:
    return {
        "description": description,
        "required": required,
        "content": {"application/json": {"schema": schema}},
    }


# POST operations that read no field still parse a body when one is sent.
IGNORED_BODY = json_body(
    request_object({}, description="Nothing is read from it."),
    "Optional; if sent, it must be a JSON object.",
    required=False,
)


def answer(description: str, schema: dict | None = None) -> dict:
    response: dict = {"description": description}
    if schema is not None:
        response["content"] = {"application/json": {"schema": schema}}
    return response


def error(description: str) -> dict:
    return answer(description, ref("Error"))


BAD_JSON = "The body is not valid JSON, or not a JSON object"
UNAUTHORIZED = error("Missing or invalid bearer token")


def path_param(name: str, description: str) -> dict:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"{description}; an unknown one, or another account's, answers 404",
        "schema": {"type": "integer"},
    }


TENANT_ID = path_param("tenant_id", "The database's `id`")
BACKUP_ID = path_param("backup_id", "The backup's `id`")
RESTORE_ID = path_param("restore_id", "The restore's `id`")


def operation(
    operation_id: str,
    tag: str,
    summary: str,
    responses: dict[int, dict],
    *,
    description: str = "",
    body: dict | None = None,
    parameters: list[dict] | None = None,
    auth: bool = True,
) -> dict:
    """One operation. Authenticated ones also answer 401 (and, like all API
    routes, 405 with an `Allow` header to any method not listed)."""
    if auth:
        responses = {**responses, 401: UNAUTHORIZED}
    op: dict = {"operationId": operation_id, "tags": [tag], "summary": summary}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    op["responses"] = {str(status): responses[status] for status in sorted(responses)}
    if not auth:
        op["security"] = []
    return op


# -- the objects ---------------------------------------------------------------------------

# Tenant.State as the API shows it. "deleted" is never listed nor found; only the
# answer to DELETE can show it, if the host finished the deletion first.
DATABASE_STATES = [
    "provisioning",
    "running",
    "sleeping",
    "deleting",
    "failed",
    "suspended",
    "deleted",
]
BACKUP_STATES = ["pending", "running", "done", "failed", "expired"]
BACKUP_KINDS = ["base", "cold", "logical"]
RESTORE_STATES = ["pending", "running", "done", "failed"]

DATABASE_FIELDS = {
    "id": integer("Identifier used in the API's paths"),
    "name": string("The name given at creation"),
    "state": enum(DATABASE_STATES),
    "state_reason": string("Why it is in this state (empty if there is nothing to say)"),
    "host": string("Host name to connect to"),
    "port": integer("Port of the host's PgBouncer (TLS)"),
    "database": string("Server-side database name: `<name>_<8 random characters>`"),
    "user": string("Owner role, the same as `database`"),
    "plan": string("Name of the plan"),
    "postgres_version": string("PostgreSQL major version of its server, e.g. `17`"),
    "created_at": timestamp(),
    "last_active_at": nullable(timestamp("Last time a client used it; null if never")),
    "wake_count": integer("Times it was woken from sleep", minimum=0),
    "size_bytes": nullable(
        integer("Disk used by its data, as its host last measured it", minimum=0)
    ),
    "read_only": {
        "type": "boolean",
        "description": "Over the plan's storage limit: writes are refused until data is "
        "deleted (reads, DELETE, TRUNCATE and DROP work)",
    },
}
CREDENTIAL_FIELDS = {
    "password": string("The owner's password; shown only in this answer"),
    "connection_string": string(
        "Session pooling: fully compatible with every client. It says "
        "`sslmode=verify-full`: trust the platform's CA (`GET /api/v1/ca.pem`) first"
    ),
    "pooled_connection_string": string(
        "Transaction pooling (database `<database>_pooled`), for many short connections"
    ),
}
BACKUP_FIELDS = {
    "id": integer(),
    "database_id": integer(),
    "kind": nullable(
        enum(
            BACKUP_KINDS,
            "`base` (online physical), `cold` (copy of a sleeping instance), `logical` "
            "(pg_dump export); null until a physical backup has started",
        )
    ),
    "state": enum(BACKUP_STATES),
    "size_bytes": nullable(integer("Size before compression", minimum=0)),
    "compressed_bytes": nullable(integer("Size in the store", minimum=0)),
    "sha256": nullable(string("Checksum of the stored object")),
    "store": string("`local` or `s3`"),
    "error": nullable(string("Why it failed")),
    "created_at": timestamp(),
    "started_at": nullable(timestamp()),
    "finished_at": nullable(timestamp()),
    "verified_at": nullable(timestamp("Last verification restore")),
    "verified_ok": nullable({"type": "boolean", "description": "Its verdict; null if never"}),
}
RESTORE_FIELDS = {
    "id": integer(),
    "backup_id": integer(),
    "database_id": integer(),
    "state": enum(RESTORE_STATES),
    "progress": string("What it is doing now"),
    "error": nullable(string("Why it failed; the database kept its data")),
    "created_at": timestamp(),
    "finished_at": nullable(timestamp()),
}

SCHEMAS = {
    "Error": response_object({"error": string("What went wrong")}),
    "CreateFailed": response_object(
        {"error": string(), "database": ref("Database")},
        "The database could not be made: it is `failed`, with the reason; delete it.",
    ),
    "Account": response_object(
        {"email": string("Normalised to lower case"), "token": string("An API token")}
    ),
    "Token": response_object({"token": string("A new API token")}),
    "Revoked": response_object({"revoked": {"type": "boolean", "const": True}}),
    "Database": response_object(DATABASE_FIELDS, "A database (never with its password)."),
    "DatabaseWithCredentials": response_object(
        DATABASE_FIELDS | CREDENTIAL_FIELDS,
        "A database with its password and connection strings, shown once.",
    ),
    "DatabaseList": response_object({"databases": array_of(ref("Database"))}),
    "Backup": response_object(BACKUP_FIELDS, "A backup or logical export."),
    "BackupList": response_object({"backups": array_of(ref("Backup"))}),
    "AccountBackup": response_object(
        BACKUP_FIELDS | {"database_name": string("Name of its database, maybe deleted")}
    ),
    "AccountBackupList": response_object({"backups": array_of(ref("AccountBackup"))}),
    "Restore": response_object(RESTORE_FIELDS, "An in-place restore."),
    "Health": response_object(
        {
            "status": enum(["ok", "unhealthy"]),
            "checks": response_object(
                {
                    name: string("`ok`, or `error: ...`")
                    for name in ("controlplane", "redis", "pooler")
                }
            ),
        }
    ),
    "NewAccount": request_object(
        {
            "email": string("A valid address; it is the account's login", format="email"),
            "password": string(
                "At least 10 characters, not all digits, not a common password", minLength=10
            ),
        },
        required=("email", "password"),
    ),
    "Credentials": request_object(
        {"email": string(), "password": string()}, required=("email", "password")
    ),
    "NewDatabase": request_object(
        {
            "name": string(
                "1-40 lowercase letters, digits and underscores, starting with a letter; "
                "unique among the account's databases",
                pattern=NAME_RE.pattern,
            )
        },
        required=("name",),
    ),
    "NewBackup": request_object(
        {
            "kind": enum(
                ["physical", "logical"],
                "`physical` (default): the whole instance; `logical`: a `pg_dump -Fc` "
                "export to download",
            )
        }
    ),
    "RestoreRequest": request_object(
        {
            "target": enum(
                ["same", "new"],
                "`same` (default): in place; `new`: into a new database",
            ),
            "name": string(
                "With `target: new`: the new database's name, as for `POST /databases` "
                "(default `<name>_restored`)",
                pattern=NAME_RE.pattern,
            ),
        }
    ),
    "RestoreIntoNew": request_object(
        {
            "name": string(
                "The new database's name, as for `POST /databases`", pattern=NAME_RE.pattern
            )
        },
        required=("name",),
    ),
}


# -- the paths ------------------------------------------------------------------------------


def _created_database(what: str) -> dict[int, dict]:
    """The answers of everything that makes a database (POST /databases and restores
    into a new one)."""
    return {
        201: answer(f"{what}; it accepts connections now", ref("DatabaseWithCredentials")),
        202: answer(
            f"{what}, still provisioning after the wait; the strings work once it runs",
            ref("DatabaseWithCredentials"),
        ),
        400: error(f"{BAD_JSON}, or a bad name"),
        403: error("The plan's quota of databases is used up"),
        409: error("The account already has a database with this name"),
        500: answer("The instance could not be made", ref("CreateFailed")),
        503: error("No host has room for a new database"),
    }


def build_paths() -> dict:
    db = "/api/v1/databases/{tenant_id}"
    backup = db + "/backups/{backup_id}"
    return {
        "/api/v1/accounts": {
            "post": operation(
                "createAccount",
                "accounts",
                "Sign up",
                {
                    201: answer("The account, with its first API token", ref("Account")),
                    400: error(f"{BAD_JSON}, a bad email, or a weak password"),
                    409: error("An account with this email exists"),
                    429: error("Too many sign-ups from this address in the last hour"),
                    503: error("No default plan is configured"),
                },
                body=json_body(ref("NewAccount")),
                auth=False,
            )
        },
        "/api/v1/tokens": {
            "post": operation(
                "createToken",
                "accounts",
                "Get a new API token",
                {
                    200: answer("A new token", ref("Token")),
                    400: error(BAD_JSON),
                    401: error("Wrong, missing or non-string email or password"),
                },
                body=json_body(ref("Credentials")),
                auth=False,
            )
        },
        "/api/v1/tokens/current": {
            "delete": operation(
                "revokeToken",
                "accounts",
                "Revoke the token this request presents",
                {200: answer("It no longer works", ref("Revoked"))},
            )
        },
        "/api/v1/databases": {
            "get": operation(
                "listDatabases",
                "databases",
                "List the account's databases",
                {200: answer("Oldest first", ref("DatabaseList"))},
            ),
            "post": operation(
                "createDatabase",
                "databases",
                "Create a database",
                _created_database("Created"),
                description="Waits for the host to start the instance (well under a second "
                "normally).",
                body=json_body(ref("NewDatabase")),
            ),
        },
        db: {
            "get": operation(
                "getDatabase",
                "databases",
                "Get a database",
                {200: answer("The database", ref("Database")), 404: error("No such database")},
                parameters=[TENANT_ID],
            ),
            "delete": operation(
                "deleteDatabase",
                "databases",
                "Delete a database",
                {
                    202: answer("Being deleted", ref("Database")),
                    400: error("`purge` is not true or false"),
                    404: error("No such database"),
                    409: error("It is still being created, or its state forbids it"),
                },
                description="The instance, its data and its pooler entry are removed; its "
                "newest backup is kept unless `purge` is true.",
                parameters=[
                    TENANT_ID,
                    {
                        "name": "purge",
                        "in": "query",
                        "required": False,
                        "description": "Delete its backups too (true/false/1/0, any case; "
                        "default false)",
                        "schema": {
                            "type": "string",
                            "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)$",
                        },
                    },
                ],
            ),
        },
        db + "/password": {
            "post": operation(
                "resetPassword",
                "databases",
                "Reset the owner's password",
                {
                    200: answer(
                        "The new password and strings; the old password no longer works",
                        ref("DatabaseWithCredentials"),
                    ),
                    400: error(BAD_JSON),
                    404: error("No such database"),
                    409: error("It is not running"),
                    503: error("The host has not applied the new password yet"),
                },
                parameters=[TENANT_ID],
                body=IGNORED_BODY,
            )
        },
        db + "/sleep": {
            "post": operation(
                "sleepDatabase",
                "databases",
                "Put a database to sleep",
                {
                    200: answer("Asleep (its next client wakes it)", ref("Database")),
                    400: error(BAD_JSON),
                    404: error("No such database"),
                    409: error("It is not running, or a client is connected (it stays awake)"),
                },
                parameters=[TENANT_ID],
                body=IGNORED_BODY,
            )
        },
        db + "/wake": {
            "post": operation(
                "wakeDatabase",
                "databases",
                "Wake a database",
                {
                    200: answer("Running", ref("Database")),
                    400: error(BAD_JSON),
                    404: error("No such database"),
                    409: error("It is neither running nor sleeping"),
                    503: error("It did not wake in time"),
                },
                parameters=[TENANT_ID],
                body=IGNORED_BODY,
            )
        },
        db + "/backups": {
            "get": operation(
                "listBackups",
                "backups",
                "List a database's backups",
                {200: answer("Its backups", ref("BackupList")), 404: error("No such database")},
                parameters=[TENANT_ID],
            ),
            "post": operation(
                "createBackup",
                "backups",
                "Back up a database",
                {
                    202: answer("Queued; poll it", ref("Backup")),
                    400: error(f"{BAD_JSON}, or a bad `kind`"),
                    404: error("No such database"),
                    409: error("It is neither running nor sleeping"),
                    429: error("The account has 3 backups not finished yet; try again later"),
                },
                description="A sleeping database is copied without waking it.",
                parameters=[TENANT_ID],
                body=json_body(ref("NewBackup"), required=False),
            ),
        },
        backup: {
            "get": operation(
                "getBackup",
                "backups",
                "Get a backup",
                {200: answer("The backup", ref("Backup")), 404: error("No such backup")},
                parameters=[TENANT_ID, BACKUP_ID],
            )
        },
        backup + "/restore": {
            "post": operation(
                "restoreBackup",
                "backups",
                "Restore a backup in place, or into a new database",
                {
                    **_created_database('With `"target": "new"`: created'),
                    202: answer(
                        'In place: queued; poll the restore. With `"target": "new"`: '
                        "created, still provisioning.",
                        {"oneOf": [ref("Restore"), ref("DatabaseWithCredentials")]},
                    ),
                    400: error(f"{BAD_JSON}, a bad `target`, or a bad `name`"),
                    404: error("No such database or backup"),
                    409: error(
                        "The backup is not done, or is a logical export; the database "
                        "cannot be restored into now, or another restore of it is not "
                        "finished; or the new name is taken"
                    ),
                },
                description="In place: the restored copy is checked before it replaces "
                "the data; on any error the database keeps its current data.",
                parameters=[TENANT_ID, BACKUP_ID],
                body=json_body(ref("RestoreRequest"), required=False),
            )
        },
        db + "/restores/{restore_id}": {
            "get": operation(
                "getRestore",
                "backups",
                "Get an in-place restore",
                {200: answer("The restore", ref("Restore")), 404: error("No such restore")},
                parameters=[TENANT_ID, RESTORE_ID],
            )
        },
        backup + "/download": {
            "get": operation(
                "downloadBackup",
                "backups",
                "Download a logical export",
                {
                    200: {
                        "description": "The `pg_dump -Fc` file, for `pg_restore`",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                        "headers": {
                            "X-Checksum-SHA256": {
                                "description": "sha256 of the file",
                                "required": True,
                                "schema": {"type": "string"},
                            },
                            "Content-Disposition": {
                                "description": 'attachment; filename="<name>-<id>.dump"',
                                "required": True,
                                "schema": {"type": "string"},
                            },
                        },
                    },
                    400: error("It is a physical backup"),
                    404: error("No such database or backup"),
                    409: error("The export is not done"),
                },
                parameters=[TENANT_ID, BACKUP_ID],
            )
        },
        "/api/v1/backups": {
            "get": operation(
                "listAccountBackups",
                "backups",
                "List every usable backup of the account",
                {
                    200: answer(
                        "Done backups, deleted databases' included", ref("AccountBackupList")
                    )
                },
            )
        },
        "/api/v1/backups/{backup_id}/restore": {
            "post": operation(
                "restoreBackupIntoNew",
                "backups",
                "Restore any of the account's backups into a new database",
                {
                    **_created_database("Created from the backup"),
                    404: error("No such backup"),
                    409: error(
                        "The backup is not done, or is a logical export; or the name is taken"
                    ),
                },
                description="Works for a deleted database's kept backup too.",
                parameters=[BACKUP_ID],
                body=json_body(ref("RestoreIntoNew")),
            )
        },
        "/api/v1/ca.pem": {
            "get": operation(
                "getCaCertificate",
                "meta",
                "The CA that signs the pooler's certificates",
                {
                    200: {
                        "description": "PEM; clients that verify certificates trust this "
                        "(`sslrootcert=` in libpq, `NODE_EXTRA_CA_CERTS` for node-postgres)",
                        "content": {"application/x-pem-file": {"schema": {"type": "string"}}},
                    }
                },
                auth=False,
            )
        },
        "/api/v1/openapi.json": {
            "get": operation(
                "getOpenApi",
                "meta",
                "This document",
                {200: answer("OpenAPI 3.1", {"type": "object"})},
                auth=False,
            )
        },
        "/api/docs": {
            "get": operation(
                "getDocs",
                "meta",
                "This document as a web page",
                {
                    200: {
                        "description": "HTML",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                auth=False,
            )
        },
        "/healthz": {
            "get": operation(
                "health",
                "meta",
                "Health of the control plane, Redis and the pooler",
                {
                    200: answer("All answer", ref("Health")),
                    503: answer("Something does not answer", ref("Health")),
                },
                auth=False,
            )
        },
    }


@functools.cache
def _document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dbaas API",
            "version": "1",
            "description": "PostgreSQL databases, each its own server, reached through "
            'PgBouncer over TLS. JSON in and out; errors are `{"error": "..."}`. Get a '
            "token from `POST /api/v1/accounts` or `POST /api/v1/tokens` and send it as "
            "`Authorization: Bearer <token>`. Every API route answers 405 (with `Allow`) "
            "to a method it does not list, and unknown `/api/` paths answer a JSON 404. "
            "Another account's database answers 404.",
        },
        "tags": [
            {"name": "accounts", "description": "Sign up and tokens"},
            {"name": "databases", "description": "Create, inspect, sleep, wake, delete"},
            {"name": "backups", "description": "Backups, restores and logical exports"},
            {"name": "meta", "description": "This document and health"},
        ],
        "security": [{"bearerAuth": []}],
        "paths": build_paths(),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from POST /api/v1/accounts or POST /api/v1/tokens",
                }
            },
            "schemas": SCHEMAS,
        },
    }


def document() -> dict:
    """The OpenAPI document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())


# -- the docs page --------------------------------------------------------------------------

METHODS = ("get", "post", "put", "patch", "delete")


def resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def type_label(schema: dict) -> str:
    """A short human description of a schema: `Database`, `array of Backup`, ..."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[1]
    if "oneOf" in schema:
        return " or ".join(type_label(s) for s in schema["oneOf"])
    kinds = schema.get("type", "any")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    names = []
    for kind in kinds:
        if kind == "array":
            names.append(f"array of {type_label(schema['items'])}")
        elif kind == "string" and "enum" in schema:
            names.append(" | ".join(f'"{v}"' for v in schema["enum"] if v is not None))
        elif kind == "string" and "format" in schema:
            names.append(f"string ({schema['format']})")
        else:
            names.append(kind)
    return " or ".join(names)


def _refs(schema: dict) -> list[str]:
    """The named objects a response body is."""
    return [s["$ref"].rsplit("/", 1)[1] for s in schema.get("oneOf", [schema]) if "$ref" in s]


def fields(doc: dict, schema: dict) -> list[dict]:
    schema = resolve(doc, schema)
    required = set(schema.get("required", ()))
    return [
        {
            "name": name,
            "type": type_label(prop),
            "required": name in required,
            "description": text(prop.get("description", "")),
            "pattern": prop.get("pattern", ""),
        }
        for name, prop in schema.get("properties", {}).items()
    ]


def text(description: str) -> str:
    """A description for the page: escaped, with `code` spans as <code>."""
    return mark_safe(re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(description)))  # noqa: S308


def docs_context(doc: dict) -> dict:
    """What the docs page shows, per tag: each operation flattened for the template."""
    groups = {tag["name"]: {**tag, "operations": []} for tag in doc["tags"]}
    for path, item in doc["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            body = op.get("requestBody")
            body_schema = body["content"]["application/json"]["schema"] if body else None
            responses = []
            for status, response in op["responses"].items():
                content = response.get("content", {})
                media, media_schema = next(iter(content.items()), (None, None))
                responses.append(
                    {
                        "status": status,
                        "description": text(response["description"]),
                        "media_type": media,
                        "type": type_label(media_schema["schema"]) if media_schema else "",
                        "refs": _refs(media_schema["schema"]) if media_schema else [],
                        "headers": list(response.get("headers", {})),
                    }
                )
            groups[op["tags"][0]]["operations"].append(
                {
                    "id": op["operationId"],
                    "method": method.upper(),
                    "path": path,
                    "summary": text(op["summary"]),
                    "description": text(op.get("description", "")),
                    "auth": op.get("security", doc["security"]) != [],
                    "parameters": [
                        {
                            **p,
                            "type": type_label(p["schema"]),
                            "pattern": p["schema"].get("pattern", ""),
                            "description": text(p.get("description", "")),
                        }
                        for p in op.get("parameters", [])
                    ],
                    "body": body_schema
                    and body
                    and {
                        "required": body["required"],
                        "description": text(body["description"]),
                        "type": type_label(body_schema),
                        "refs": _refs(body_schema),
                        "fields": fields(doc, body_schema),
                    },
                    "responses": responses,
                }
            )
    schemas = [
        {
            "name": name,
            "description": text(schema.get("description", "")),
            "fields": fields(doc, schema),
            # Request objects tell which fields are required; response objects
            # always carry all their fields.
            "request": schema.get("additionalProperties") is not False,
        }
        for name, schema in doc["components"]["schemas"].items()
    ]
    info = {**doc["info"], "description": text(doc["info"]["description"])}
    return {"info": info, "groups": list(groups.values()), "schemas": schemas}
