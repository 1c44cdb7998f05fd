"""The recent-models list, a small JSON file in the user's config folder.

``$XDG_CONFIG_HOME/cellrefine/recent_models.json`` on Linux (Qt's
``GenericConfigLocation``: ``~/Library/Preferences`` on macOS,
``%LOCALAPPDATA%`` on Windows). A missing or unreadable file is an empty list.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from qtpy.QtCore import QStandardPaths

logger = logging.getLogger(__name__)

__all__ = ["recent_models_file", "load_recent_models", "add_recent_model", "MAX_RECENT"]

MAX_RECENT = 8


def recent_models_file() -> Path:
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericConfigLocation)
    return Path(base or Path.home() / ".config") / "cellrefine" / "recent_models.json"


def load_recent_models() -> list[str]:
    """Saved model paths, most recent first, that still exist."""
    path = recent_models_file()
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable recent-models file %s: %s", path, error)
        return []
    if not isinstance(entries, list):
        return []
    return [str(entry) for entry in entries if isinstance(entry, str) and Path(entry).exists()][:MAX_RECENT]


def add_recent_model(model_path) -> list[str]:
    """Put ``model_path`` first in the list and save it; returns the new list."""
    entry = str(Path(model_path).expanduser().resolve())
    entries = [entry] + [e for e in load_recent_models() if e != entry]
    entries = entries[:MAX_RECENT]
    path = recent_models_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries, indent=1) + "\n")
    except OSError as error:  # a read-only config folder must not break loading a model
        logger.warning("could not save the recent-models list to %s: %s", path, error)
    return entries
