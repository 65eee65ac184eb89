"""End-of-run notifications: one JSON POST to a webhook, never allowed to affect the run."""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def webhook_problem(url: str | None) -> str | None:
    """A sentence when the URL cannot be a webhook, else None (checked before a run starts)."""
    if not url:
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return (f"The webhook '{url}' is not an http(s) URL; use one like "
                "https://example.org/hooks/finetune, or leave it empty.")
    return None


def post_webhook(url: str, payload: dict[str, Any], timeout: float = 5.0) -> tuple[bool, str]:
    """POST once; returns (delivered, sentence). Never raises: a broken hook must not break a run."""
    problem = webhook_problem(url)
    if problem:
        return False, problem
    body = json.dumps(payload, default=str).encode("utf-8")
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "User-Agent": "fine-tune-studio"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the user's own URL
            return True, f"webhook answered {resp.status}"
    except urllib.error.HTTPError as e:
        msg = f"the webhook {url} answered HTTP {e.code}; the run itself is unaffected"
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        msg = f"the webhook {url} could not be reached ({getattr(e, 'reason', e)}); the run itself is unaffected"
    log.warning(msg)
    return False, msg


def run_end_payload(run_id: str, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "state": status.get("state"),
        "best_val_loss": status.get("best_val_loss"),
        "duration_s": status.get("duration_s"),
        "error": status.get("error"),
    }
