"""Fine-Tune Studio backend: everything that is not UI. Never imports gradio."""
import os as _os

# No telemetry, and nothing that stalls on a closed network.
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("DO_NOT_TRACK", "1")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
