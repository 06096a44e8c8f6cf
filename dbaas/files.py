"""Small helpers shared by everything that writes other programs' files:
Jinja2 rendering of config templates, atomic writes, ownership for the service user.
"""

import functools
import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import jinja2


def render_template(package_dir: Path, name: str, **context: object) -> str:
    """Render `<package_dir>/templates/<name>`; a missing variable is an error."""
    return _environment(package_dir).get_template(name).render(**context)


@functools.cache
def _environment(package_dir: Path) -> jinja2.Environment:
    # One environment per folder, so each template is compiled once per process
    # (rendering sits on the provisioning and wake paths).
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(package_dir / "templates"),
        # A running process keeps the templates it first read: they go with the
        # code it runs. A checkout updated under it (new variables in a template)
        # takes effect at its restart, instead of failing every render meanwhile.
        auto_reload=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - these are config files, not HTML
    )


def write_atomic(path: Path, text: str, mode: int = 0o644, owner: str | None = None) -> bool:
    """Replace `path` with `text` atomically; return False when it already had it."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            chown(Path(tmp), owner)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def chown(path: Path, user: str, group_of: str | None = None) -> None:
    """chown to `user` (and its primary group) when we are root; no-op otherwise."""
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(user)
    gid = pwd.getpwnam(group_of).pw_gid if group_of else pw.pw_gid
    os.chown(path, pw.pw_uid, gid)


def make_dir(path: Path, mode: int, owner: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        chown(path, owner)
    return path


def grant_traversal(path: Path, user: str) -> None:
    """Let `user` reach `path`: its ancestors need search (x) permission.

    A checkout under /root is mode 700; an ACL entry gives the service account
    search-only access to each such ancestor, nothing more.
    """
    if os.geteuid() != 0:
        return
    for ancestor in reversed(path.parents):
        if os.stat(ancestor).st_mode & 0o001:
            continue
        subprocess.run(["setfacl", "-m", f"u:{user}:--x", str(ancestor)], check=True)
        print(f"note: gave {user} search permission on {ancestor} (ACL)", file=sys.stderr)
