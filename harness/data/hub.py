"""Is the Hugging Face hub reachable? Asked once per process, so offline runs fail in seconds.

``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``) says no without asking; otherwise one
TCP connection to the hub's host, with a short timeout, decides. Without this check an
offline machine spends ~30 s in ``datasets``' and ``huggingface_hub``'s retries before it
reports a missing file.
"""

from __future__ import annotations

import functools
import os
import socket

HUB_HOST = "huggingface.co"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def hub_unreachable() -> str | None:
    """None when the hub can be reached; otherwise why not, in a few words."""
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _flag(flag):
            return f"{flag}=1"
    endpoint = os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    name, _, port = host.partition(":")
    try:
        socket.create_connection((name, int(port or 443)), timeout=3).close()
    except OSError as error:
        return f"no connection to {host} ({type(error).__name__})"
    return None
