"""Request bodies: JSON objects, nothing else."""

import json
from typing import Any

from django.http import HttpRequest
from ninja.parser import Parser

from tenants.errors import InvalidInput


class JsonObjectParser(Parser):
    def parse_body(self, request: HttpRequest) -> dict[str, Any]:
        try:
            body = json.loads(request.body)
            # Lone surrogates ("\ud800") parse, but no UTF-8 encoder (the database's,
            # the password hasher's) takes them; nesting too deep for Python too.
            json.dumps(body, ensure_ascii=False).encode()
        except (ValueError, UnicodeError, RecursionError):
            raise InvalidInput("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidInput("request body must be a JSON object")
        return body
