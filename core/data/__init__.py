"""Datasets: files -> rows (files), rows -> Examples in the common instruction shapes, splits (examples), chat
formatting and training encoding (prompts), and the shipped demo material (demo)."""

from core.data.demo import ASSETS, DEMO_DIR, demo_path, load_demo_splits
from core.data.examples import (
    SHAPES,
    Dataset,
    Example,
    Splits,
    detect_shape,
    load_examples,
    row_to_example,
    split_examples,
    text_field,
)
from core.data.files import EXTENSIONS, read_rows
from core.data.prompts import (
    FALLBACK_TEMPLATE,
    EncodedExample,
    build_messages,
    encode_for_training,
    format_prompt,
    render_prompt,
)
from core.errors import DataError
from core.limits import MAX_FIELD_CHARS, MAX_FILE_BYTES

__all__ = [
    "ASSETS", "DEMO_DIR", "EXTENSIONS", "FALLBACK_TEMPLATE", "MAX_FIELD_CHARS", "MAX_FILE_BYTES", "SHAPES", "DataError",
    "Dataset", "EncodedExample", "Example", "Splits", "build_messages", "demo_path", "detect_shape",
    "encode_for_training", "format_prompt", "load_demo_splits", "load_examples", "read_rows", "render_prompt",
    "row_to_example", "split_examples", "text_field",
]
