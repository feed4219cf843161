"""Where this opsrg checkout lives: the default project folder, and what git provenance describes.

Its own module, without the settings model: the commands that job scripts run on every row
(``python -m opsrg.provenance begin/end``) need this path and nothing of pydantic.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
