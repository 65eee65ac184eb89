"""Fine-Tune Studio UI (Gradio). Imports backend; never trains or parses files itself."""
import os as _os

# Gradio's analytics would phone home (and stall on a closed network).
_os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
