"""SCRAM-SHA-256 secrets (RFC 5802/7677) in PostgreSQL's stored format.

One secret is written both to the tenant's postgres and to the pooler's auth file:
identical secrets let PgBouncer pass the client's SCRAM proof through to the server,
so no plaintext password is ever stored anywhere.
"""

import base64
import hashlib
import hmac
import secrets

ITERATIONS = 4096  # PostgreSQL's default scram_iterations


def scram_secret(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def new_password(nbytes: int = 24) -> str:
    """A URL-safe random password: no characters that need quoting in a URL."""
    return secrets.token_urlsafe(nbytes)
