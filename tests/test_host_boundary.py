"""The host side (tenants/host/, the host's own processes: the activator, pooler,
exports and run_host commands, and the packages they run: poolers/,
unikernel_images/) never imports the control plane's models, services, tasks, API
or web code, directly or through anything it imports: it cannot touch the control
plane's database. Read from the source (every import, function-local ones too),
not by importing: Django's start-up imports the whole project."""

import ast
from pathlib import Path

from dbaas.env import BASE_DIR

HOST_SIDE = [
    "tenants/host",
    "tenants/management/commands/run_activator.py",
    "tenants/management/commands/run_registrar.py",
    "tenants/management/commands/run_pooler.py",
    "tenants/management/commands/run_exports.py",
    "tenants/management/commands/run_host.py",
    "poolers",
    "unikernel_images",
]
CONTROL_PLANE = {
    # The control plane's database: its models and every module that writes them.
    "tenants.models",
    "tenants.lifecycle",
    "tenants.specs",
    "tenants.reports",
    "tenants.moves",
    "tenants.host_identity",
    "tenants.services",
    "tenants.tasks",
    "tenants.backups",
    "tenants.selectors",
    "tenants.dispatch",
    "tenants.ratelimit",
    "tenants.api",
    "tenants.views",
    "tenants.urls",
    "tenants.web_urls",
    "tenants.admin",
    "tenants.admin_site",
    "tenants.downloads",
    "dbaas.views",
    "dbaas.urls",
}
OURS = ("tenants", "dbaas", "poolers", "unikernel_images")


def module_file(name: str) -> Path | None:
    base = BASE_DIR.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(BASE_DIR).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Our modules `path` imports (`from a import b` counts as a.b when b is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {
                f"{node.module}.{alias.name}"
                for alias in node.names
                if module_file(f"{node.module}.{alias.name}")
            }
    return {name for name in found if name.split(".")[0] in OURS}


def host_side_files() -> list[Path]:
    files = []
    for entry in HOST_SIDE:
        path = BASE_DIR / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def test_the_host_side_reaches_no_control_plane_module():
    files = host_side_files()
    assert len(files) > 20, files  # the whole host side, not an empty list
    # Breadth-first over what the host side imports, remembering who imported what.
    seen: dict[str, str] = {module_name(f): "(host side)" for f in files}
    queue = list(seen)
    while queue:
        name = queue.pop()
        path = module_file(name)
        if path is None:
            continue
        for imported in imports_of(path):
            if imported not in seen:
                seen[imported] = name
                queue.append(imported)
    reached = {
        name: seen[name]
        for name in seen
        if any(name == c or name.startswith(c + ".") for c in CONTROL_PLANE)
    }
    assert not reached, f"control-plane modules reached (module: imported by): {reached}"


def test_the_check_sees_an_import_of_the_control_plane(tmp_path):
    """The checker itself: a function-local import is found."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from tenants import services\n    import tenants.tasks\n")
    assert imports_of(sample) >= {"tenants", "tenants.services", "tenants.tasks"}
