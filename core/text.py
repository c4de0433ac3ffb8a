"""How numbers, sizes, durations and errors read to a person: the one set of formatters the app, the CLI and the
engine's messages share. Imports nothing of the project (any layer may use it).

``None`` (a value not known) formats as ``""`` unless a function says otherwise.
"""

from __future__ import annotations


def fmt_count(n: int | float | None) -> str:
    """1234 -> 1.23K, 1843200 -> 1.84M, 134515008 -> 135M, 2e9 -> 2B (3 significant digits)."""
    if n is None:
        return ""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(int(n))


def fmt_duration(seconds: float | None) -> str:
    """4.25 -> 4.2 s, 42.1 -> 42 s, 185 -> 3m 05s, 7300 -> 2h 01m."""
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_bytes(n: int | float | None) -> str:
    """``1.2 GB``, ``34.5 MB``, ``812 KB``, ``12 B``: powers of 1000, as the size limits are stated (core.limits)."""
    if n is None:
        return ""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.0f} {unit}" if unit == "KB" else f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_percent(value: float | None) -> str:
    """A share in percent with the digits a small one needs: 100 -> 100%, 1.3514 -> 1.35%, 0.0034 -> 0.0034%."""
    if value is None:
        return ""
    return f"{value:.0f}%" if value >= 99.95 else (f"{value:.2f}%" if value >= 0.01 else f"{value:.4f}%")


def fmt_number(value: float | None, digits: int) -> str:
    """``value`` with ``digits`` decimals."""
    return "" if value is None else f"{value:.{digits}f}"


def one_line(err: BaseException | str) -> str:
    """The first line of an error (or of a text), for a warning, a toast or stderr: never a traceback."""
    text = str(err).strip()
    if text:
        return text.splitlines()[0]
    return type(err).__name__ if isinstance(err, BaseException) else ""


def short_name(ref: object) -> str:
    """The last part of a path as a person typed it: ``runs/abc/`` -> ``abc``, ``C:\\runs\\abc`` -> ``abc``."""
    return str(ref).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
