"""`dbaas`, the command line client: the REST API (v1) from a terminal.

It speaks only HTTP to the API, like any other client, so it works against any
dbaas server. The token and the API URL are kept in the user's config directory.
"""

import hashlib
import http.client
import json
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime
from functools import cached_property
from pathlib import Path

import click

from dbaas.units import human_bytes

DEFAULT_API_URL = "http://127.0.0.1:8000"
# Generous: creating a database waits on the server for the instance to run.
REQUEST_TIMEOUT = 120
FINISHED = ("done", "failed", "expired")

EPILOG = """\b
Exit codes:
  0  success
  1  the API refused the request, or another error (not logged in, unknown name)
  2  wrong usage of the command line
  3  the server cannot be reached

\b
The token and the API URL are kept in $XDG_CONFIG_HOME/dbaas/config.json
(~/.config/dbaas/config.json), readable by you only. A saved token is only
sent to the API URL it was obtained from.
"""


# -- errors ----------------------------------------------------------------------------


class CliError(click.ClickException):
    """An expected failure: one line on stderr, no traceback."""

    exit_code = 1

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


class Unreachable(CliError):
    exit_code = 3


# -- HTTP --------------------------------------------------------------------------------


class Client:
    """A JSON client of the API. HTTP errors become a CliError with the API's message."""

    def __init__(self, api_url: str, token: str | None = None) -> None:
        # urllib also opens file:// and ftp:// URLs; only HTTP is an API.
        if urllib.parse.urlsplit(api_url).scheme not in ("http", "https"):
            raise CliError(f"the API URL must start with http:// or https://, not {api_url!r}")
        self.api_url = api_url
        self.token = token

    def open(self, method: str, path: str, body: dict | None = None, query: dict | None = None):
        """The response, to read (a download) or to parse (call)."""
        url = f"{self.api_url}/api/v1{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json", "User-Agent": "dbaas-cli"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        # S310: the scheme was checked in __init__.
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            return urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT)  # noqa: S310
        except urllib.error.HTTPError as exc:  # before URLError: it is one
            raise CliError(self._message(exc)) from None
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)  # URLError wraps the socket's error
            raise Unreachable(f"cannot reach {self.api_url}: {reason}") from None

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None):
        with self.open(method, path, body, query) as response:
            try:
                return json.load(response)
            except ValueError:
                raise CliError(f"{self.api_url} answered no JSON: is it a dbaas API?") from None
            except (OSError, http.client.HTTPException) as exc:
                raise Unreachable(f"connection to {self.api_url} lost: {exc}") from None

    def _message(self, exc: urllib.error.HTTPError) -> str:
        try:
            message = json.load(exc)["error"]
        except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException):
            # Not the API's answer: a proxy's error page, or not a dbaas server at all.
            message = f"HTTP {exc.code} {exc.reason} from {exc.url}"
        if exc.code == 401 and self.token:
            message += " (log in again: dbaas login)"
        return message


# -- configuration -------------------------------------------------------------------


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says to ignore a relative value.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "dbaas" / "config.json"


def load_config() -> dict:
    path = config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise CliError(f"{path} is not a JSON object; delete it and log in again")
    return config


def save_config(values: dict) -> Path:
    path = config_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)  # also when it existed: it holds a token
        # mkstemp makes the file 0600, so the token is never readable by others, and
        # the rename means a crash leaves the old file whole.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-")
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(values, file, indent=2)
                file.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc}") from None
    return path


class Session:
    """The global options, resolved lazily so that `--help` never reads the config."""

    def __init__(self, api_url: str | None, token: str | None, as_json: bool) -> None:
        self._api_url = api_url
        self._token = token
        self.as_json = as_json

    @cached_property
    def config(self) -> dict:
        return load_config()

    @cached_property
    def api_url(self) -> str:
        return (self._api_url or self.config.get("api_url") or DEFAULT_API_URL).rstrip("/")

    @cached_property
    def token(self) -> str | None:
        if self._token:
            return self._token
        # A token goes only to the server that issued it: pointing --api-url at
        # another server must not hand it over.
        if self.config.get("api_url") == self.api_url:
            return self.config.get("token")
        return None

    def client(self, auth: bool = True) -> Client:
        if not auth:
            return Client(self.api_url)
        if not self.token:
            raise CliError(
                f"not logged in to {self.api_url} (run: dbaas login, or set DBAAS_TOKEN)"
            )
        return Client(self.api_url, self.token)

    def database(self, name: str) -> dict:
        """The database the user calls NAME; the API addresses it by id."""
        for db in self.client().call("GET", "/databases")["databases"]:
            if db["name"] == name:
                return db
        raise CliError(f"no database named {name!r} (see: dbaas db list)")

    def remember(self, email: str, token: str) -> Path:
        return save_config(self.config | {"api_url": self.api_url, "email": email, "token": token})

    def output(self, obj: dict, human: Callable[[], None]) -> None:
        """The API's answer as JSON with --json, else the human form."""
        if self.as_json:
            click.echo(json.dumps(obj, indent=2))
        else:
            human()


pass_session = click.make_pass_decorator(Session)


# -- formatting ------------------------------------------------------------------------


def when(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M")


def size(value: int | None) -> str:
    return human_bytes(value, missing="-")


def table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def pairs(items: list[tuple[str, object]]) -> None:
    width = max(len(key) for key, _ in items)
    for key, value in items:
        click.echo(f"{key.ljust(width)}  {'-' if value is None else value}")


def database_pairs(db: dict) -> list[tuple[str, object]]:
    state = f"{db['state']} ({db['state_reason']})" if db.get("state_reason") else db["state"]
    return [
        ("name", db["name"]),
        ("id", db["id"]),
        ("state", state),
        ("host:port", f"{db['host']}:{db['port']}"),
        ("database", db["database"]),
        ("user", db["user"]),
        ("plan", db["plan"]),
        ("postgres", db.get("postgres_version")),
        ("created", when(db["created_at"])),
        ("last active", when(db["last_active_at"])),
        ("wakes", db["wake_count"]),
    ]


def show_credentials(session: Session, db: dict) -> None:
    """A new database (or a restored copy): the only time its password is shown."""

    def human() -> None:
        pairs(
            database_pairs(db)
            + [
                ("connection string", db["connection_string"]),
                ("pooled", db["pooled_connection_string"]),
            ]
        )
        if db["state"] != "running":
            click.echo(f"note: it is {db['state']}; the string works once it runs", err=True)
        click.echo("It checks the server's certificate: run `dbaas trust` once first.", err=True)
        click.echo(
            f"Keep the password now: it is not shown again (`dbaas db url {db['name']}` "
            "sets a new one).",
            err=True,
        )

    session.output(db, human)


def backup_pairs(backup: dict) -> list[tuple[str, object]]:
    verified = {True: "ok", False: "FAILED", None: "-"}[backup["verified_ok"]]
    return [
        ("id", backup["id"]),
        ("kind", backup["kind"]),
        ("state", backup["state"]),
        ("size", size(backup["size_bytes"])),
        ("compressed", size(backup["compressed_bytes"])),
        ("sha256", backup["sha256"]),
        ("created", when(backup["created_at"])),
        ("finished", when(backup["finished_at"])),
        ("verified", verified),
        ("error", backup["error"]),
    ]


def wait_for(client: Client, path: str, what: str) -> dict:
    """Poll an object until its state is final, telling the user what it is doing."""
    delay, last = 0.1, None
    while True:
        obj = client.call("GET", path)
        if obj["state"] in FINISHED:
            return obj
        progress = f" ({obj['progress']})" if obj.get("progress") else ""
        status = f"{what}: {obj['state']}{progress}"
        if status != last:
            click.echo(f"{status}...", err=True)
            last = status
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


# -- commands ----------------------------------------------------------------------------


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--api-url",
    envvar="DBAAS_API_URL",
    metavar="URL",
    help=f"The dbaas server [env DBAAS_API_URL; default: the saved one, else {DEFAULT_API_URL}].",
)
@click.option(
    "--token", envvar="DBAAS_TOKEN", help="API token [env DBAAS_TOKEN; default: the saved one]."
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answers instead.")
@click.pass_context
def cli(ctx: click.Context, api_url: str | None, token: str | None, as_json: bool) -> None:
    """Create and manage your PostgreSQL databases on a dbaas server."""
    ctx.obj = Session(api_url, token, as_json)


def _logged_in(session: Session, email: str, token: str) -> None:
    path = session.remember(email, token)
    session.output(
        {"email": email, "api_url": session.api_url},
        lambda: click.echo(f"Logged in to {session.api_url} as {email} (token saved in {path})."),
    )


def _credential_options(*, confirm: bool) -> Callable:
    """--email and --password, asked for when missing (the password hidden)."""

    def decorate(command: Callable) -> Callable:
        command = click.option(
            "--password",
            prompt=True,
            hide_input=True,
            confirmation_prompt=confirm,
            help="Prefer the prompt: options show in the process list.",
        )(command)
        return click.option("--email", prompt=True)(command)

    return decorate


@cli.command()
@_credential_options(confirm=True)
@pass_session
def signup(session: Session, email: str, password: str) -> None:
    """Create an account, and log in with it."""
    answer = session.client(auth=False).call(
        "POST", "/accounts", {"email": email, "password": password}
    )
    _logged_in(session, answer["email"], answer["token"])


@cli.command()
@_credential_options(confirm=False)
@pass_session
def login(session: Session, email: str, password: str) -> None:
    """Log in: get a token and save it with the API URL."""
    answer = session.client(auth=False).call(
        "POST", "/tokens", {"email": email, "password": password}
    )
    _logged_in(session, email, answer["token"])


@cli.command()
@pass_session
def logout(session: Session) -> None:
    """Revoke the saved token on the server and forget it."""
    config = session.config
    email = config.get("email")
    if "token" in config:
        origin = config.get("api_url") or session.api_url  # where the token came from
        try:
            Client(origin, config["token"]).call("DELETE", "/tokens/current")
        except Unreachable:
            click.echo(
                f"warning: {origin} cannot be reached; the token is forgotten here "
                "but still valid there",
                err=True,
            )
        except CliError:
            pass  # revoked already, or the server does not know it: nothing to undo
        # The API URL stays, so that the next `dbaas login` goes to the same server.
        save_config({k: v for k, v in config.items() if k not in ("token", "email")})
    session.output(
        {"logged_out": email is not None},
        lambda: click.echo(f"Logged out {email}." if email else "Not logged in."),
    )


@cli.command()
@pass_session
def trust(session: Session) -> None:
    """Trust the platform's CA for PostgreSQL clients.

    Connection strings say sslmode=verify-full: libpq (psql, psycopg, Django,
    SQLAlchemy) then checks the pooler's certificate against ~/.postgresql/root.crt
    (or $PGSSLROOTCERT). This adds the platform's CA to that file, once.
    """
    with session.client(auth=False).open("GET", "/ca.pem") as response:
        pem = response.read().decode("ascii", "replace")
    if not pem.startswith("-----BEGIN CERTIFICATE-----"):
        raise CliError(f"{session.api_url} answered no certificate: is it a dbaas API?")
    target = Path(os.environ.get("PGSSLROOTCERT") or Path.home() / ".postgresql" / "root.crt")
    try:
        present = target.read_text() if target.exists() else ""
        added = pem.strip() not in present
        if added:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("a") as file:
                file.write(("" if not present or present.endswith("\n") else "\n") + pem)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc}") from None
    result = {"path": str(target), "added": added}
    message = f"{'Added' if added else 'Already in'} {target}: the platform's CA."
    session.output(result, lambda: click.echo(message))


# -- databases ---------------------------------------------------------------------------


@cli.group("db")
def db_group() -> None:
    """Databases: NAME is the name you gave it."""


@db_group.command("create")
@click.argument("name")
@pass_session
def db_create(session: Session, name: str) -> None:
    """Create a database, print its connection strings.

    This is the only time its password is shown.
    """
    show_credentials(session, session.client().call("POST", "/databases", {"name": name}))


@db_group.command("list")
@pass_session
def db_list(session: Session) -> None:
    """List your databases."""
    answer = session.client().call("GET", "/databases")

    def human() -> None:
        if not answer["databases"]:
            click.echo("No databases yet; create one with: dbaas db create NAME")
            return
        rows = [
            [
                d["name"],
                d["state"],
                f"{d['host']}:{d['port']}",
                when(d["last_active_at"]),
                when(d["created_at"]),
            ]
            for d in answer["databases"]
        ]
        table(["NAME", "STATE", "HOST:PORT", "LAST ACTIVE", "CREATED"], rows)

    session.output(answer, human)


@db_group.command("show")
@click.argument("name")
@pass_session
def db_show(session: Session, name: str) -> None:
    """Show one database (never its password)."""
    db = session.database(name)
    session.output(db, lambda: pairs(database_pairs(db)))


@db_group.command("url")
@click.argument("name")
@click.option("--pooled", is_flag=True, help="The transaction-pooling string instead.")
@pass_session
def db_url(session: Session, name: str, pooled: bool) -> None:
    """Set a new password, print the connection string.

    The previous password stops working at once.
    """
    db = session.database(name)
    answer = session.client().call("POST", f"/databases/{db['id']}/password")
    key = "pooled_connection_string" if pooled else "connection_string"

    def human() -> None:
        # Only the string on stdout, for psql "$(dbaas db url NAME)".
        click.echo(answer[key])
        click.echo("A new password is set; the previous one no longer works.", err=True)

    session.output(answer, human)


@db_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--purge", is_flag=True, help="Delete its backups too (else the newest is kept).")
@pass_session
def db_delete(session: Session, name: str, yes: bool, purge: bool) -> None:
    """Delete a database and its data."""
    db = session.database(name)
    if not yes:
        kept = "every backup of it too" if purge else "its newest backup is kept"
        click.confirm(f"Delete database {name!r} and its data ({kept})?", abort=True, err=True)
    query = {"purge": "true"} if purge else None
    answer = session.client().call("DELETE", f"/databases/{db['id']}", query=query)
    session.output(answer, lambda: click.echo(f"{name}: {answer['state']}"))


def _state_change(session: Session, name: str, action: str) -> None:
    db = session.database(name)
    answer = session.client().call("POST", f"/databases/{db['id']}/{action}")
    session.output(answer, lambda: click.echo(f"{name}: {answer['state']}"))


@db_group.command("sleep")
@click.argument("name")
@pass_session
def db_sleep(session: Session, name: str) -> None:
    """Stop its server now (refused while a client is connected)."""
    _state_change(session, name, "sleep")


@db_group.command("wake")
@click.argument("name")
@pass_session
def db_wake(session: Session, name: str) -> None:
    """Start its server now (a connection would wake it anyway)."""
    _state_change(session, name, "wake")


# -- backups -----------------------------------------------------------------------------


@cli.group("backup")
def backup_group() -> None:
    """Backups of a database: NAME is the database's name."""


@backup_group.command("list")
@click.argument("name")
@pass_session
def backup_list(session: Session, name: str) -> None:
    """List a database's backups, newest first."""
    db = session.database(name)
    answer = session.client().call("GET", f"/databases/{db['id']}/backups")

    def human() -> None:
        if not answer["backups"]:
            click.echo(f"No backups of {name} yet; make one with: dbaas backup create {name}")
            return
        verified = {True: "ok", False: "FAILED", None: "-"}
        rows = [
            [
                str(b["id"]),
                b["kind"] or "-",
                b["state"],
                size(b["compressed_bytes"]),
                when(b["created_at"]),
                verified[b["verified_ok"]],
            ]
            for b in answer["backups"]
        ]
        table(["ID", "KIND", "STATE", "SIZE", "CREATED", "VERIFIED"], rows)

    session.output(answer, human)


@backup_group.command("create")
@click.argument("name")
@click.option("--logical", is_flag=True, help="A pg_dump export to download, not a snapshot.")
@click.option("--wait", is_flag=True, help="Wait until it is done (or failed).")
@pass_session
def backup_create(session: Session, name: str, logical: bool, wait: bool) -> None:
    """Back up a database now."""
    db = session.database(name)
    client = session.client()
    body = {"kind": "logical" if logical else "physical"}
    backup = client.call("POST", f"/databases/{db['id']}/backups", body)
    if wait:
        path = f"/databases/{db['id']}/backups/{backup['id']}"
        backup = wait_for(client, path, f"backup {backup['id']}")
    session.output(backup, lambda: pairs(backup_pairs(backup)))
    if backup["state"] in ("failed", "expired"):
        raise CliError(f"backup {backup['id']} {backup['state']}: {backup['error']}")


@backup_group.command("restore")
@click.argument("name")
@click.argument("backup_id", type=int)
@click.option("--new", "new_name", metavar="NEWNAME", help="Into a new database, not in place.")
@click.option("--wait", is_flag=True, help="Wait until an in-place restore is done (or failed).")
@click.option("--yes", is_flag=True, help="Do not ask before replacing the data in place.")
@pass_session
def backup_restore(
    session: Session, name: str, backup_id: int, new_name: str | None, wait: bool, yes: bool
) -> None:
    """Restore a backup in place, or into a new database with --new."""
    db = session.database(name)
    client = session.client()
    path = f"/databases/{db['id']}/backups/{backup_id}/restore"
    if new_name:
        answer = client.call("POST", path, {"target": "new", "name": new_name})
        show_credentials(session, answer)
        return
    if not yes:
        click.confirm(
            f"Replace the data of {name!r} with backup {backup_id}?", abort=True, err=True
        )
    restore = client.call("POST", path, {"target": "same"})
    if wait:
        restore_path = f"/databases/{db['id']}/restores/{restore['id']}"
        restore = wait_for(client, restore_path, f"restore {restore['id']}")
    session.output(
        restore,
        lambda: pairs(
            [
                ("restore", restore["id"]),
                ("backup", restore["backup_id"]),
                ("database", name),
                ("state", restore["state"]),
                ("progress", restore["progress"] or None),
                ("error", restore["error"]),
            ]
        ),
    )
    if restore["state"] == "failed":
        raise CliError(f"restore {restore['id']} failed: {restore['error']}")


@backup_group.command("download")
@click.argument("name")
@click.argument("backup_id", type=int)
@click.option(
    "-o", "--output", "target", required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@pass_session
def backup_download(session: Session, name: str, backup_id: int, target: Path) -> None:
    """Download a logical export, checking its sha256.

    The file is in pg_dump's custom format, for pg_restore.
    """
    db = session.database(name)
    path = f"/databases/{db['id']}/backups/{backup_id}/download"
    digest, written = hashlib.sha256(), 0
    with session.client().open("GET", path) as response:
        expected = (response.headers.get("X-Checksum-SHA256") or "").lower()
        if not expected:
            raise CliError("the server sent no X-Checksum-SHA256; the file cannot be verified")
        # Into a temporary file beside the target, renamed once the checksum
        # matches: FILE is never a truncated or corrupted export. 0600 (mkstemp):
        # it holds the database's data.
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        except OSError as exc:
            raise CliError(f"cannot write {target}: {exc}") from None
        try:
            with os.fdopen(fd, "wb") as file:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    file.write(chunk)
                    written += len(chunk)
            if digest.hexdigest() != expected:
                raise CliError(
                    f"the download does not match its checksum ({written} bytes); "
                    f"{target} was not written"
                )
            os.replace(tmp, target)
        except (OSError, http.client.HTTPException) as exc:
            raise CliError(f"download failed, {target} was not written: {exc}") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
    result = {"path": str(target), "bytes": written, "sha256": expected}
    session.output(
        result, lambda: click.echo(f"Wrote {target} ({size(written)}, sha256 verified).")
    )


def main() -> None:
    cli(prog_name="dbaas")
