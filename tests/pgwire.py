"""A minimal PostgreSQL frontend for tests that must send what no driver sends: the
messages are built by hand (TLS, StartupMessage, SCRAM-SHA-256 by RFC 5802/7677),
so a test can put them in any order and see each answer.
"""

import base64
import hashlib
import hmac
import secrets
import socket
import ssl
import struct

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
PROTOCOL_3 = 196608

# Authentication request codes ('R' messages).
AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 0, 10, 11, 12


class Closed(Exception):
    """The server closed the connection."""


class ServerError(Exception):
    """An ErrorResponse: its fields by code (S severity, C sqlstate, M message)."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields.get("M", "error"))
        self.fields = fields


def startup(user: str, database: str, **params: str) -> bytes:
    body = struct.pack("!i", PROTOCOL_3)
    for key, value in {"user": user, "database": database, **params}.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def sasl_initial_response(client_first: str) -> bytes:
    data = client_first.encode()
    return message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(data)) + data)


def sasl_response(client_final: str) -> bytes:
    return message(b"p", client_final.encode())


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


class Scram:
    """The client side of one SCRAM-SHA-256 exchange (no channel binding)."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        # PgBouncer, like PostgreSQL, ignores the user name here: n= is empty.
        self.client_first_bare = f"n=,r={self.nonce}"
        self.server_signature = b""

    def client_first(self) -> str:
        return "n,," + self.client_first_bare

    def client_final(self, server_first: str) -> str:
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        if not attrs["r"].startswith(self.nonce):
            raise ValueError("server nonce does not extend ours")
        salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{self.client_first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}"


class Connection:
    """One TCP connection to a PostgreSQL server or pooler, upgraded to TLS."""

    def __init__(self, host: str, port: int, timeout: float = 10, source: str = "") -> None:
        raw = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
        raw.sendall(SSL_REQUEST)
        if raw.recv(1) != b"S":
            raw.close()
            raise Closed("the server refused TLS")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the test only needs the channel
        self.sock = context.wrap_socket(raw)

    def send(self, *messages: bytes) -> None:
        """Send the messages in one write (pipelined)."""
        self.sock.sendall(b"".join(messages))

    def _read_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except (ConnectionResetError, ssl.SSLError) as exc:
                raise Closed(str(exc)) from exc
            if not chunk:
                raise Closed("connection closed by the server")
            data += chunk
        return data

    def read(self) -> tuple[bytes, bytes]:
        """The next message as (type, payload); an ErrorResponse raises ServerError."""
        header = self._read_exactly(5)
        kind, length = header[:1], struct.unpack("!i", header[1:])[0]
        payload = self._read_exactly(length - 4)
        if kind == b"E":
            fields = {}
            for part in payload.split(b"\0"):
                if part:
                    fields[chr(part[0])] = part[1:].decode(errors="replace")
            raise ServerError(fields)
        return kind, payload

    def read_auth(self) -> tuple[int, bytes]:
        """The next authentication request, skipping nothing else."""
        kind, payload = self.read()
        if kind != b"R":
            raise AssertionError(f"expected an authentication request, got {kind!r}")
        return struct.unpack("!i", payload[:4])[0], payload[4:]

    def read_until_ready(self) -> None:
        while self.read()[0] != b"Z":
            pass

    def login(self, user: str, database: str, password: str, **params: str) -> None:
        """An honest SCRAM-SHA-256 login, with any startup parameters; raises
        ServerError if refused."""
        scram = Scram(password)
        self.send(startup(user, database, **params))
        code, _ = self.read_auth()
        if code != AUTH_SASL:
            raise AssertionError(f"expected AuthenticationSASL, got {code}")
        self.send(sasl_initial_response(scram.client_first()))
        code, server_first = self.read_auth()
        if code != AUTH_SASL_CONTINUE:
            raise AssertionError(f"expected SASLContinue, got {code}")
        self.send(sasl_response(scram.client_final(server_first.decode())))
        finish_login(self, scram)

    def simple_query(self, sql: str) -> list[tuple[str | None, ...]]:
        self.send(query(sql))
        rows = []
        while True:
            kind, payload = self.read()
            if kind == b"D":
                rows.append(_data_row(payload))
            elif kind == b"Z":
                return rows

    def close(self) -> None:
        try:
            self.sock.sendall(message(b"X", b""))
        except OSError:
            pass
        self.sock.close()


def finish_login(conn: Connection, scram: Scram) -> None:
    """After the client's final SCRAM message: check the server's signature, then
    wait for ReadyForQuery."""
    code, payload = conn.read_auth()
    if code != AUTH_SASL_FINAL:
        raise AssertionError(f"expected SASLFinal, got {code}")
    server_final = payload.decode().rstrip("\0")
    if server_final != "v=" + base64.b64encode(scram.server_signature).decode():
        raise AssertionError("the server's SCRAM signature does not match")
    code, _ = conn.read_auth()
    if code != AUTH_OK:
        raise AssertionError(f"expected AuthenticationOk, got {code}")
    conn.read_until_ready()


def _data_row(payload: bytes) -> tuple[str | None, ...]:
    (count,) = struct.unpack("!h", payload[:2])
    values, pos = [], 2
    for _ in range(count):
        (length,) = struct.unpack("!i", payload[pos : pos + 4])
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(payload[pos : pos + length].decode())
            pos += length
    return tuple(values)
