import os
import sys

# the CLI reports its own progress on stderr; hub/transformers bars would interleave with it
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from core.cli import main  # noqa: E402

sys.exit(main())
