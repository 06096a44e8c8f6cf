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
from typing import Any

import jinja2


def render_template(package_dir: Path, name: str, **context: object) -> str:
    """Render `<package_dir>/templates/<name>`; a missing variable is an error."""
    return _environment(package_dir).get_template(name).render(**context)


def template_macros(package_dir: Path, name: str) -> Any:
    """The macros of `<package_dir>/templates/<name>`, as callables (each renders
    its text from its arguments)."""
    return _environment(package_dir).get_template(name).module


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


def write_atomic(
    path: Path, text: str, mode: int = 0o644, owner: str | None = None, durable: bool = True
) -> bool:
    """Replace `path` with `text` atomically; return False when it already had it.
    Not `durable`: not forced to disk first (a file rendered again from its source at
    every start, on a path where an fsync is felt; after a power loss it may be
    empty)."""
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
            if durable:
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


class LogFollower:
    """The lines appended to a file since the last call (like `tail -F`): from its
    end when first opened, from the start again when it was cut or replaced. With
    `cut_at`, the file is cut back to nothing once read past that many bytes (for
    a writer that appends, O_APPEND: it goes on at the new end)."""

    def __init__(self, path: Path, cut_at: int | None = None) -> None:
        self.path = path
        self.cut_at = cut_at
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if self._inode is None:
            self._inode, self._offset = stat.st_ino, stat.st_size
            return []
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self._inode, self._offset, self._partial = stat.st_ino, 0, b""
        if stat.st_size == self._offset:
            return []
        with self.path.open("rb") as file:
            file.seek(self._offset)
            data = self._partial + file.read(stat.st_size - self._offset)
        self._offset = stat.st_size
        *lines, self._partial = data.split(b"\n")
        if self.cut_at is not None and self._offset > self.cut_at:
            os.truncate(self.path, 0)
            self._offset = 0
        return [line.decode(errors="replace") for line in lines]
