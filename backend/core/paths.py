"""Where the project's own files are: the checkout root, its bundled presets and sample data.

One place, so moving a module never changes what "the repository" means to it.
"""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PRESETS_DIR = PROJECT_ROOT / "presets"
SAMPLES_DIR = PROJECT_ROOT / "assets" / "samples"
