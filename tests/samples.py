"""The bundled sample datasets, cut to a few rows for tests that train on them."""
from __future__ import annotations

from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"


def small_copy(tmp_path: Path, name: str, n: int = 4) -> Path:
    """The first n lines of a sample file, written into tmp_path under the same name."""
    out = tmp_path / name
    out.write_text("".join((SAMPLES / name).read_text().splitlines(keepends=True)[:n]))
    return out
