"""The project's own evaluate.Metric modules, one file each; load one with ``evaluate.load(<path to the file>)``.

Each file is self-contained apart from ``_text.py`` (answer normalisation), which evaluate copies beside the
script it loads because it is imported relatively.
"""
