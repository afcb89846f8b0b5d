"""What reaches the console besides probe's own lines: the progress bars of the libraries probe drives."""

from __future__ import annotations

import sys


def quiet_progress_bars() -> None:
    """No loading bars from transformers / huggingface_hub (GGUF's are switched off where it is read)."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is first imported
    if "huggingface_hub" in sys.modules:  # already imported: tell it, and transformers, directly
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
