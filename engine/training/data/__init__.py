"""Committed data of the embedded model's corpus: the package pins and the package-level manifest."""

from pathlib import Path

HERE = Path(__file__).parent
PINS_PATH = HERE / "packages.txt"
MANIFEST_PATH = HERE / "corpus-manifest.json"
