"""Optional JSON files beside checkpoints (configs, trainer states)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def read_json_object(path: Path) -> dict:
    """Return the JSON object in ``path``; log a warning and return {} if unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("ignoring %s: %s", path, error)
        return {}
    return value if isinstance(value, dict) else {}
