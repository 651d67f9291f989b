"""The node-local IPAM state file: written with the project's crash-safe writer (an allocation
the agent has answered with survives ``kill -9``), read back as IPAM errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ciliary.agent.ipam.types import IPAMError


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, None when there is no file."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise IPAMError(f"cannot read IPAM state {path}: {err}", "invalid") from err
    if not isinstance(data, dict):
        raise IPAMError(f"IPAM state {path} is not a JSON object", "invalid")
    return data
