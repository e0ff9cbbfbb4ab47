"""Writing the JSON files a run may be cut off in the middle of (bench checkpoints, check results,
dispatch tables)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: str | Path, data, indent: int = 1) -> Path:
    """Write ``data`` as JSON to ``path`` atomically: a temporary file beside it (named for this process,
    so two writers never share one), then a rename, so a reader -- or a run killed mid-write -- never sees
    half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=indent) + "\n")
    os.replace(tmp, path)
    return path
