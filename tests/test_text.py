"""core.text: the one set of formatters for counts, durations, sizes, shares and one-line errors."""

from __future__ import annotations

from core.text import fmt_bytes, fmt_count, fmt_duration, fmt_number, fmt_percent, one_line, short_name


def test_formatters():
    assert [fmt_count(n) for n in (None, 12, 4608, 1_843_200, 134_515_008, 2e9)] == [
        "", "12", "4.61K", "1.84M", "135M", "2B"]
    assert [fmt_duration(s) for s in (None, 4.25, 42.1, 185, 7300)] == ["", "4.2 s", "42 s", "3m 05s", "2h 01m"]
    assert [fmt_bytes(n) for n in (None, 512, 4096, 7_372_800, 61_200_000, 2.5e9)] == [
        "", "512 B", "4 KB", "7.4 MB", "61.2 MB", "2.5 GB"]
    assert [fmt_percent(p) for p in (None, 100.0, 1.3514, 0.0034)] == ["", "100%", "1.35%", "0.0034%"]
    assert fmt_number(1.23456, 3) == "1.235" and fmt_number(None, 2) == ""


def test_one_line_and_short_name():
    assert one_line(ValueError("r: must be >= 1\nTraceback ...")) == "r: must be >= 1"
    assert one_line(KeyError()) == "KeyError" and one_line("  a\nb") == "a"
    assert [short_name(ref) for ref in ("runs/abc/", "abc", r"C:\runs\abc", "/x/y")] == ["abc", "abc", "abc", "y"]
