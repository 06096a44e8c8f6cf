"""Builds and loads instance images: a minimal root with exactly what postgres needs,
plus a template cluster made once with initdb, plus a manifest.

Layout under <images dir>: `<name>@<hash12>/{rootfs,template,manifest.json}` and a
`<name>` symlink to the current build, swapped atomically, so a rebuild never
changes the files under a running instance.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dbaas.files import render_template

PACKAGE_DIR = Path(__file__).resolve().parent
PG_MAJOR = "15"
PG_LIB = Path(f"/usr/lib/postgresql/{PG_MAJOR}")
PG_SHARE = Path(f"/usr/share/postgresql/{PG_MAJOR}")
SUPERUSER = "platform"
TENANT_DATABASE = "tenant"  # renamed to the tenant's database name at provisioning

# Executables inside the image. setpriv drops from root to the tenant's uid
# after bubblewrap has set up the namespaces (see runtimes/sandbox.py).
EXECUTABLES = [PG_LIB / "bin" / "postgres", Path("/usr/bin/setpriv")]
# Server modules postgres loads itself, plus the extensions a tenant (who is not
# superuser) may create: PostgreSQL's "trusted" ones that apps commonly use.
CORE_MODULES = ["plpgsql", "dict_snowball", "libpqwalreceiver"]
EXTENSIONS = {
    "pgcrypto": "pgcrypto",
    "uuid-ossp": "uuid-ossp",
    "citext": "citext",
    "hstore": "hstore",
    "pg_trgm": "pg_trgm",
    "btree_gin": "btree_gin",
    "btree_gist": "btree_gist",
    "fuzzystrmatch": "fuzzystrmatch",
    "intarray": "_int",
    "ltree": "ltree",
    "tablefunc": "tablefunc",
    "unaccent": "unaccent",
    # Not for tenants (untrusted): the platform installs it to verify backups.
    "amcheck": "amcheck",
}
# Mount points the runtime binds over; they must exist in a read-only root.
MOUNT_POINTS = ["data", "run/postgresql", "dev", "proc", "tmp"]

Progress = Callable[[str], None]


class ImageError(Exception):
    pass


@dataclass(frozen=True)
class Image:
    name: str
    path: Path
    manifest: dict

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def template(self) -> Path:
        return self.path / "template"

    @property
    def postgres(self) -> str:
        """Path of the server binary inside the image."""
        return str(PG_LIB / "bin" / "postgres")


def load_image(images_dir: Path, name: str) -> Image:
    path = images_dir / name
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise ImageError(
            f"image {name!r} is not built in {images_dir}; run `manage.py build_image`"
        ) from None
    return Image(name=name, path=path.resolve(), manifest=manifest)


def build_image(
    images_dir: Path,
    name: str,
    build_user: str | None,
    force: bool = False,
    progress: Progress = print,
) -> Image:
    """Build image `name` unless an identical one exists; return it."""
    if name != f"postgres-{PG_MAJOR}":
        raise ImageError(f"unknown image {name!r}; this host can build postgres-{PG_MAJOR}")
    source = _source_fingerprint()
    if not force:
        try:
            current = load_image(images_dir, name)
            if current.manifest.get("source") == source:
                progress(f"image {name} is up to date ({current.manifest['content_hash'][:12]})")
                return current
        except ImageError:
            pass

    images_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=images_dir, prefix=f".build-{name}-"))
    # Readable so that initdb (as the service user) and runtimes running as a
    # tenant's uid can use it; the template is copied by root and holds no secret.
    os.chmod(staging, 0o755)
    try:
        started = time.monotonic()
        progress("collecting the root file system")
        files = _build_rootfs(staging / "rootfs")
        progress(f"rootfs: {files} files; creating the template cluster (initdb)")
        _build_template(staging / "template", name, build_user)
        content_hash = _tree_hash(staging / "rootfs", staging / "template")
        manifest = {
            "name": name,
            "version": _postgres_version(),
            "content_hash": content_hash,
            "rootfs_bytes": _tree_size(staging / "rootfs"),
            "template_bytes": _tree_size(staging / "template"),
            "files": files,
            "source": source,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - started, 2),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        final = images_dir / f"{name}@{content_hash[:12]}"
        if final.exists():
            shutil.rmtree(staging)
        else:
            staging.rename(final)
        link_tmp = images_dir / f".{name}.link"
        link_tmp.unlink(missing_ok=True)
        link_tmp.symlink_to(final.name)
        link_tmp.replace(images_dir / name)
        progress(
            f"image {name} built: {content_hash[:12]}, rootfs {manifest['rootfs_bytes'] >> 20} MB,"
            f" template {manifest['template_bytes'] >> 20} MB"
        )
        return load_image(images_dir, name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _source_fingerprint() -> str:
    """What the image is made from: the host's postgres build, this builder (its file
    lists) and the config template; a change in any of them means a rebuild."""
    st = (PG_LIB / "bin" / "postgres").stat()
    recipe = hashlib.sha256()
    for part in (Path(__file__), PACKAGE_DIR / "templates" / "postgresql.conf.j2"):
        recipe.update(part.read_bytes())
    return f"{_postgres_version()}:{st.st_size}:{int(st.st_mtime)}:{recipe.hexdigest()[:12]}"


def _postgres_version() -> str:
    out = subprocess.run(
        [str(PG_LIB / "bin" / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    return out.split()[2] if out else "unknown"


def _build_rootfs(root: Path) -> int:
    wanted: set[Path] = set(EXECUTABLES)
    for module in CORE_MODULES + list(EXTENSIONS.values()):
        wanted.add(PG_LIB / "lib" / f"{module}.so")
    # Encoding conversions are loaded when a client's encoding differs.
    wanted.update((PG_LIB / "lib").glob("*_and_*.so"))
    wanted.update((PG_LIB / "lib").glob("euc*.so"))
    for elf in list(wanted):
        wanted.update(_shared_libraries(elf))

    for sub in ("timezonesets", "tsearch_data"):
        wanted.update(p for p in (PG_SHARE / sub).rglob("*") if p.is_file())
    for ext in EXTENSIONS:
        wanted.update((PG_SHARE / "extension").glob(f"{ext}.control"))
        wanted.update((PG_SHARE / "extension").glob(f"{ext}--*.sql"))
    wanted.update((PG_SHARE / "extension").glob("plpgsql*"))
    wanted.add(Path("/usr/share/zoneinfo/UTC"))

    for src in sorted(wanted):
        dest = root / src.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest, follow_symlinks=True)
    for point in MOUNT_POINTS:
        (root / point).mkdir(parents=True, exist_ok=True)
    return len(wanted)


_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def _shared_libraries(elf: Path) -> set[Path]:
    out = subprocess.run(
        ["ldd", str(elf)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return {Path(m.group(1)) for m in _LDD_LINE.finditer(out)}


def _build_template(template: Path, image_name: str, build_user: str | None) -> None:
    """initdb once, configure, create the tenant database, shut down cleanly."""
    template.mkdir(mode=0o700)
    sockdir = Path(tempfile.mkdtemp(prefix="dbaas-build-"))
    if build_user:
        shutil.chown(template, build_user)
        shutil.chown(sockdir, build_user)
    env = {"PATH": "/usr/bin:/bin", "TZ": "UTC", "LANG": "C", "LC_ALL": "C"}
    try:
        _run(
            [
                str(PG_LIB / "bin" / "initdb"),
                "-D",
                str(template),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=reject",
                "--data-checksums",
                "--locale=C",
                "-E",
                "UTF8",
                "--wal-segsize=1",
                "--no-instructions",
            ],
            user=build_user,
            env=env,
        )
        (template / "postgresql.conf").write_text(
            render_template(PACKAGE_DIR, "postgresql.conf.j2", image_name=image_name)
        )
        server = subprocess.Popen(
            [
                str(PG_LIB / "bin" / "postgres"),
                "-D",
                str(template),
                "-c",
                f"unix_socket_directories={sockdir}",
            ],
            user=build_user,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_ready(template, server)
            psql = [
                "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(sockdir),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-c",
            ]
            # Tenants get no access to the maintenance databases; their own
            # database is this one, renamed and handed over at provisioning.
            for statement in (
                f"CREATE DATABASE {TENANT_DATABASE}",
                "REVOKE ALL ON DATABASE postgres, template1 FROM PUBLIC",
            ):
                _run([*psql, statement], user=build_user, env=env)
        finally:
            server.send_signal(signal.SIGINT)  # fast shutdown: clean checkpoint
            server.wait(timeout=60)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    for leftover in ("postmaster.opts", "postmaster.pid"):
        (template / leftover).unlink(missing_ok=True)
    if build_user:
        # Root copies the template for each tenant; owners are set per copy.
        _run(["chown", "-R", "root:root", str(template)])


def _wait_ready(pgdata: Path, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ImageError(f"template postgres exited: {server.stderr.read().decode()[-2000:]}")
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise ImageError("template postgres did not become ready")


def _run(args: list[str], user: str | None = None, env: dict | None = None) -> None:
    proc = subprocess.run(
        args, user=user, env=env, capture_output=True, text=True, timeout=120, cwd="/"
    )
    if proc.returncode != 0:
        raise ImageError(f"{args[0]} failed: {proc.stderr.strip()[-2000:]}")


def _tree_hash(*roots: Path) -> str:
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root.parent)
            digest.update(str(rel).encode() + b"\0")
            # Timestamps and system identifiers make a cluster's bytes differ per
            # build; of the template, names and configuration files are hashed.
            if path.is_file() and (root.name == "rootfs" or path.suffix == ".conf"):
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
