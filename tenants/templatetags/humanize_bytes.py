"""`bytes`: sizes as people read them ("12.3 MB"), "?" when not measured yet.

Binary multiples, as the plans' limits are (storage_limit_mb is MiB): a 512 MB
limit reads "512.0 MB", not "536.9 MB".
"""

from django import template

register = template.Library()


@register.filter(name="bytes")
def bytes_(value: int | None) -> str:
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
