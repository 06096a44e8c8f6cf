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
# Debian's layout: one directory per PostgreSQL major (postgresql-common).
POSTGRES_LIB_ROOT = Path("/usr/lib/postgresql")
POSTGRES_SHARE_ROOT = Path("/usr/share/postgresql")
# Extension files built here from Debian's source packages (scripts/extensions.sh),
# in the same layout under this root, for what the OS itself does not package.
EXTRA_ROOT = Path(__file__).resolve().parent.parent / "build" / "extensions"
SUPERUSER = "platform"
TENANT_DATABASE = "tenant"  # renamed to the tenant's database name at provisioning
IMAGE_NAME = re.compile(r"postgres-(\d+)")

# setpriv drops from root to the tenant's uid after bubblewrap has set up the
# namespaces (see runtimes/sandbox.py).
SETPRIV = Path("/usr/bin/setpriv")
# Server modules postgres loads itself, and the platform's own (pg_module/dbaas.c).
CORE_MODULES = ["plpgsql", "dict_snowball", "libpqwalreceiver", "dbaas"]
# Where an instance finds the host's registrar of databases (see pg_module/dbaas.c).
REGISTRAR_DIR = "/run/dbaas"
REGISTRAR_SOCKET = ".s.registrar"
REGISTRAR_PATH = f"{REGISTRAR_DIR}/{REGISTRAR_SOCKET}"
# Extensions a tenant (who is not superuser) may create, by extension name: the
# module it loads, and whether the image marks it trusted itself. PostgreSQL's own
# "trusted" contrib modules are trusted already; pgvector and PostGIS are not, and
# are made so in the image's copy of their control files, so that a database owner
# can create them. Which of these a tenant may create is its plan's choice (see
# Plan.extensions), enforced inside the instance.
EXTENSIONS = {
    "pgcrypto": ("pgcrypto", False),
    "uuid-ossp": ("uuid-ossp", False),
    "citext": ("citext", False),
    "hstore": ("hstore", False),
    "pg_trgm": ("pg_trgm", False),
    "btree_gin": ("btree_gin", False),
    "btree_gist": ("btree_gist", False),
    "fuzzystrmatch": ("fuzzystrmatch", False),
    "intarray": ("_int", False),
    "ltree": ("ltree", False),
    "tablefunc": ("tablefunc", False),
    "unaccent": ("unaccent", False),
    "vector": ("vector", True),
    "postgis": ("postgis-3", True),
    # Not for tenants (untrusted): the platform installs it to verify backups.
    "amcheck": ("amcheck", False),
}
# Optional: built into the image when the host has them (pgvector, PostGIS).
OPTIONAL_EXTENSIONS = {"vector", "postgis"}
# Data files PostGIS reads at run time (coordinate systems for ST_Transform).
EXTRA_SHARE_DIRS = [Path("/usr/share/proj")]
ZONEINFO = Path("/usr/share/zoneinfo")
# Mount points the runtime binds over; they must exist in a read-only root.
MOUNT_POINTS = ["data", "run/postgresql", "run/dbaas", "dev", "proc", "tmp"]

Progress = Callable[[str], None]


class ImageError(Exception):
    pass


def installed_majors() -> list[str]:
    """The PostgreSQL majors this host has servers of, oldest first."""
    found = [p.parent.parent.name for p in POSTGRES_LIB_ROOT.glob("*/bin/postgres")]
    return sorted((m for m in found if m.isdigit()), key=int)


def newest_major() -> str:
    majors = installed_majors()
    if not majors:
        raise ImageError(f"no PostgreSQL server is installed under {POSTGRES_LIB_ROOT}")
    return majors[-1]


def image_name(major: str) -> str:
    return f"postgres-{major}"


def default_image_name() -> str:
    """What new databases get: DBAAS_IMAGE, or the newest major this host has."""
    from dbaas.env import env_str

    return env_str("DBAAS_IMAGE", "") or image_name(newest_major())


def major_of(name: str) -> str:
    match = IMAGE_NAME.fullmatch(name)
    if not match:
        raise ImageError(f"not an image name: {name!r} (postgres-<major>)")
    return match.group(1)


def pg_lib(major: str) -> Path:
    return POSTGRES_LIB_ROOT / major


def pg_share(major: str) -> Path:
    return POSTGRES_SHARE_ROOT / major


def pg_tool(major: str, name: str) -> str:
    """A client program of that major on the host (pg_dump, pg_basebackup, ...)."""
    return str(pg_lib(major) / "bin" / name)


@dataclass(frozen=True)
class Image:
    name: str
    path: Path
    manifest: dict

    @property
    def major(self) -> str:
        return major_of(self.name)

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def template(self) -> Path:
        return self.path / "template"

    @property
    def postgres(self) -> str:
        """Path of the server binary inside the image."""
        return str(pg_lib(self.major) / "bin" / "postgres")


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
    major = major_of(name)
    if major not in installed_majors():
        available = ", ".join(image_name(m) for m in installed_majors()) or "none"
        raise ImageError(
            f"cannot build {name!r}: PostgreSQL {major} is not installed ({available})"
        )
    source = _source_fingerprint(major)
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
        files, extensions = _build_rootfs(staging / "rootfs", major)
        progress(
            f"rootfs: {files} files, extensions {', '.join(sorted(extensions))}; "
            "creating the template cluster (initdb)"
        )
        _build_template(staging / "template", name, major, build_user)
        content_hash = _tree_hash(staging / "rootfs", staging / "template")
        rootfs_bytes = _tree_size(staging / "rootfs")
        template_bytes = _tree_size(staging / "template")
        manifest = {
            "name": name,
            "version": _postgres_version(major),
            "major": major,
            "extensions": sorted(extensions),
            "content_hash": content_hash,
            "rootfs_bytes": rootfs_bytes,
            "template_bytes": template_bytes,
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
            f"image {name} built: {content_hash[:12]}, rootfs {rootfs_bytes >> 20} MB,"
            f" template {template_bytes >> 20} MB"
        )
        return load_image(images_dir, name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _source_fingerprint(major: str) -> str:
    """What the image is made from: the host's postgres build, the extension modules
    it takes, this builder (its file lists) and the config template; a change in any
    of them means a rebuild."""
    st = (pg_lib(major) / "bin" / "postgres").stat()
    recipe = hashlib.sha256()
    for part in (
        Path(__file__),
        PACKAGE_DIR / "templates" / "postgresql.conf.j2",
        PACKAGE_DIR / "sql" / "platform.sql",
    ):
        recipe.update(part.read_bytes())
    modules = CORE_MODULES + [module for module, _trust in EXTENSIONS.values()]
    for module in sorted(modules):
        found = _find(pg_lib(major) / "lib" / f"{module}.so")
        if found is not None:
            recipe.update(f"{found}:{found.stat().st_size}:{int(found.stat().st_mtime)}".encode())
    version = _postgres_version(major)
    return f"{version}:{st.st_size}:{int(st.st_mtime)}:{recipe.hexdigest()[:12]}"


def _find(path: Path) -> Path | None:
    """`path` on the host, or its copy under EXTRA_ROOT (built from source), or None."""
    for candidate in (path, EXTRA_ROOT / path.relative_to("/")):
        if candidate.exists():
            return candidate
    return None


def _postgres_version(major: str) -> str:
    out = subprocess.run(
        [pg_tool(major, "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    return out.split()[2] if out else "unknown"


def _build_rootfs(root: Path, major: str) -> tuple[int, list[str]]:
    """Copy what postgres of `major` needs into `root`; return the number of files
    and the tenant extensions included."""
    lib, share = pg_lib(major), pg_share(major)
    wanted: dict[Path, Path] = {}  # destination (absolute, as inside) -> source

    def want(path: Path) -> None:
        source = _find(path)
        if source is None:
            raise ImageError(f"{path} is missing on this host")
        wanted[path] = source

    for path in (lib / "bin" / "postgres", SETPRIV):
        want(path)
    for module in CORE_MODULES:
        want(lib / "lib" / f"{module}.so")
    # Encoding conversions are loaded when a client's encoding differs.
    for path in (*(lib / "lib").glob("*_and_*.so"), *(lib / "lib").glob("euc*.so")):
        want(path)
    for sub in ("timezonesets", "tsearch_data"):
        for path in (share / sub).rglob("*"):
            if path.is_file():
                want(path)
    want_extension = []
    for ext, (module, _trust) in EXTENSIONS.items():
        control = share / "extension" / f"{ext}.control"
        if _find(control) is None or _find(lib / "lib" / f"{module}.so") is None:
            if ext in OPTIONAL_EXTENSIONS:
                continue
            raise ImageError(f"extension {ext} is not installed for PostgreSQL {major}")
        want_extension.append(ext)
        want(lib / "lib" / f"{module}.so")
        for root_dir in (Path("/"), EXTRA_ROOT):
            ext_dir = root_dir / share.relative_to("/") / "extension"
            for path in (*ext_dir.glob(f"{ext}.control"), *ext_dir.glob(f"{ext}--*.sql")):
                want(Path("/") / path.relative_to(root_dir))
    for path in (share / "extension").glob("plpgsql*"):
        want(path)
    if "postgis" in want_extension:
        for directory in EXTRA_SHARE_DIRS:
            for path in directory.rglob("*"):
                if path.is_file():
                    want(path)
    # Every shared library the executables and modules load, as ldd resolves it.
    for elf in [p for p in wanted if p.suffix == ".so" or p.name in ("postgres", "setpriv")]:
        for dep in _shared_libraries(wanted[elf]):
            wanted.setdefault(dep, dep)

    for dest, src in sorted(wanted.items()):
        target = root / dest.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".sql" and src.is_symlink() and "/" not in str(src.readlink()):
            # PostGIS names ~100 upgrade scripts as links to one 8 MB file: keep links.
            target.symlink_to(src.readlink())
        else:
            shutil.copy2(src, target, follow_symlinks=True)
    for ext in want_extension:
        if EXTENSIONS[ext][1]:
            _mark_trusted(root / (share / "extension" / f"{ext}.control").relative_to("/"))
    files = len(wanted) + _copy_zoneinfo(root)
    # Peer authentication names the connecting uid by this file: root only, the
    # host agent's (the platform's superuser logs in so, see pg_hba.conf.j2).
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:host agent:/:/nonexistent\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    for point in MOUNT_POINTS:
        (root / point).mkdir(parents=True, exist_ok=True)
    return files, [e for e in want_extension if e != "amcheck"]


def _mark_trusted(control: Path) -> None:
    """Let a database owner create this extension (its script runs as the bootstrap
    superuser, inside the tenant's own sandboxed instance)."""
    lines = [
        line
        for line in control.read_text().splitlines()
        if not line.replace(" ", "").startswith(("trusted=", "superuser="))
    ]
    control.write_text("\n".join([*lines, "trusted = true"]) + "\n")


def _copy_zoneinfo(root: Path) -> int:
    """The whole time zone database, as the OS has it (Debian's postgres reads the
    system's tzdata): every name a normal server knows works in a tenant's. Links
    inside the tree stay links."""
    target = root / ZONEINFO.relative_to("/")

    def outside(directory: str, names: list[str]) -> list[str]:
        # `localtime -> /etc/localtime` names the host's setting, not a zone.
        links = (Path(directory, n) for n in names)
        return [link.name for link in links if link.is_symlink() and link.readlink().is_absolute()]

    shutil.copytree(ZONEINFO, target, symlinks=True, ignore=outside)
    return sum(1 for p in target.rglob("*") if p.is_file() or p.is_symlink())


_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def _shared_libraries(elf: Path) -> set[Path]:
    out = subprocess.run(
        ["ldd", str(elf)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return {Path(m.group(1)) for m in _LDD_LINE.finditer(out)}


def _build_template(template: Path, name: str, major: str, build_user: str | None) -> None:
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
                pg_tool(major, "initdb"),
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
            render_template(PACKAGE_DIR, "postgresql.conf.j2", image_name=name)
        )
        server = subprocess.Popen(
            [
                pg_tool(major, "postgres"),
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

            def psql(database: str, *args: str) -> None:
                _run(
                    [
                        pg_tool(major, "psql"),
                        "-X",
                        "-q",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-h",
                        str(sockdir),
                        "-U",
                        SUPERUSER,
                        "-d",
                        database,
                        *args,
                    ],
                    user=build_user,
                    env=env,
                )

            # The platform's objects first, so that every database copied from the
            # templates has them: template1 (CREATE DATABASE's default) and template0
            # (which a tenant may name, as pg_restore users do).
            platform_sql = ["-f", str(PACKAGE_DIR / "sql" / "platform.sql")]
            psql("template1", *platform_sql)
            psql("postgres", "-c", "ALTER DATABASE template0 ALLOW_CONNECTIONS true")
            psql("template0", *platform_sql)
            psql("template0", "-c", "VACUUM FREEZE")  # as initdb leaves it
            psql("postgres", "-c", "ALTER DATABASE template0 ALLOW_CONNECTIONS false")
            # Tenants get no access to the maintenance databases; their own
            # database is this one, renamed and handed over at provisioning.
            psql("postgres", "-c", f"CREATE DATABASE {TENANT_DATABASE}")
            psql("postgres", "-c", "REVOKE ALL ON DATABASE postgres, template1 FROM PUBLIC")
            # Frozen, hint bits set: a tenant that only reads the template's
            # catalogs never writes them, so they stay shared (runtimes/sandbox.py
            # layers each instance over the template). Then a checkpoint, so that
            # the template keeps as little WAL as min_wal_size allows.
            for database in ("template1", "postgres", TENANT_DATABASE):
                psql(database, "-c", "VACUUM (FREEZE, ANALYZE)")
            psql("postgres", "-c", "CHECKPOINT")
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
            said = server.stderr.read().decode() if server.stderr else ""
            raise ImageError(f"template postgres exited: {said[-2000:]}")
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
            if path.is_symlink():
                digest.update(str(path.readlink()).encode())
            elif path.is_file() and (root.name == "rootfs" or path.suffix == ".conf"):
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _tree_size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() or p.is_symlink())
