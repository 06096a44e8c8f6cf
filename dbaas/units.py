"""Sizes as people read them, the same in the web pages, the admin and the CLI.

Binary multiples, as the plans' limits are (storage_limit_mb is MiB): a 512 MB
limit reads "512.0 MB", not "536.9 MB". Plain Python: the CLI imports it without
Django.
"""


def human_bytes(value: int | None, missing: str = "?") -> str:
    """ "12.3 MB"; `missing` when there is no value (not measured yet)."""
    if value is None:
        return missing
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
