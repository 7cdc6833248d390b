"""Python sources of permissively licensed PyPI packages, for the embedded model's corpus.

`engine/training/data/packages.txt` pins every package by name and version (one `name==version` a
line). `download` fetches each with `pip download --no-deps --only-binary=:all:` (a wheel holds the
package's `.py` files as installed; sdists are skipped so that no build runs). The licence is read from
the wheel's own metadata, never guessed: `License-Expression` (PEP 639), else the `License` field when
it names one licence, else the `License ::` trove classifiers. A package is kept only when every
licence it declares is one of MIT, BSD (2/3-clause), Apache-2.0, PSF, ISC or the Unlicense/0BSD/CC0
(public-domain-like): anything else, copyleft or unknown, is left out and listed with the reason.

`extract` unpacks a kept wheel's `.py` files (tests, examples and vendored third-party copies left
out, as corpus.py leaves them out of the stdlib) under `ROOT/<package>/`, beside the wheel's licence
files so that the notices travel with the code.
"""

from __future__ import annotations

import email.parser
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PINS = Path(__file__).parent / "data" / "packages.txt"

PERMISSIVE = {
    "MIT": "MIT",
    "MIT-0": "MIT",
    "BSD": "BSD",
    "BSD-2-CLAUSE": "BSD-2-Clause",
    "BSD-3-CLAUSE": "BSD-3-Clause",
    "APACHE-2.0": "Apache-2.0",
    "APACHE 2.0": "Apache-2.0",
    "APACHE SOFTWARE LICENSE": "Apache-2.0",
    "APACHE LICENSE 2.0": "Apache-2.0",
    "APACHE LICENSE, VERSION 2.0": "Apache-2.0",
    "APACHE-2": "Apache-2.0",
    "PSF": "PSF-2.0",
    "PSF-2.0": "PSF-2.0",
    "PYTHON-2.0": "PSF-2.0",
    "PYTHON SOFTWARE FOUNDATION LICENSE": "PSF-2.0",
    "ISC": "ISC",
    "ISC LICENSE (ISCL)": "ISC",
    "0BSD": "0BSD",
    "UNLICENSE": "Unlicense",
    "THE UNLICENSE (UNLICENSE)": "Unlicense",
    "CC0-1.0": "CC0-1.0",
    "MIT LICENSE": "MIT",
    "BSD LICENSE": "BSD",
    "BSD-3": "BSD-3-Clause",
    "3-CLAUSE BSD LICENSE": "BSD-3-Clause",
    "NEW BSD LICENSE": "BSD-3-Clause",
    "MODIFIED BSD LICENSE": "BSD-3-Clause",
    "SIMPLIFIED BSD LICENSE": "BSD-2-Clause",
}
# Trove classifiers (`License :: OSI Approved :: X`) -> SPDX.
CLASSIFIERS = {
    "MIT License": "MIT",
    "MIT No Attribution License (MIT-0)": "MIT",
    "BSD License": "BSD",
    "Apache Software License": "Apache-2.0",
    "Python Software Foundation License": "PSF-2.0",
    "ISC License (ISCL)": "ISC",
    "The Unlicense (Unlicense)": "Unlicense",
    "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": "CC0-1.0",
    "Zero-Clause BSD (0BSD)": "0BSD",
}
# Folders whose files are not the package's own ordinary code.
SKIPPED_DIRS = frozenset(
    {
        "test",
        "tests",
        "testing",
        "examples",
        "example",
        "docs",
        "_vendor",
        "vendor",
        "vendored",
        "__pycache__",
    }
)
LICENCE_FILE = re.compile(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", re.IGNORECASE)


@dataclass(frozen=True)
class Pin:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Licence:
    spdx: str | None  # the permissive licence, or None when the package is left out
    declared: str  # what the metadata says, for the manifest
    source: str  # "License-Expression", "License", "classifier" or "none"


def read_pins(path: str | Path = DEFAULT_PINS) -> list[Pin]:
    pins = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name or not version:
            raise ValueError(f"{path}: {line!r} is not name==version")
        pins.append(Pin(name.strip(), version.strip()))
    return pins


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_for(pin: Pin, folder: Path) -> Path | None:
    """The downloaded wheel of `pin` in `folder`, if any (wheel names are `name-version-tags.whl`,
    the name spelt with `_` or `.` where the pin may have `-`)."""
    for path in sorted(folder.glob("*.whl")):
        name, _, rest = path.name.partition("-")
        version = rest.split("-", 1)[0]
        if _normalise(name) == _normalise(pin.name) and version == pin.version:
            return path
    return None


def download(pins: Iterable[Pin], folder: str | Path, log: Iterable | None = None) -> dict[str, str]:
    """`pip download` each pin (no dependencies, wheels only) unless its wheel is already there.

    Returns {pin: "ok" | "cached" | error text}.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for pin in pins:
        if wheel_for(pin, folder) is not None:
            results[str(pin)] = "cached"
            continue
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "-q", "-d", str(folder), str(pin)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0 and wheel_for(pin, folder) is not None:
            results[str(pin)] = "ok"
        else:
            lines = [x for x in (done.stderr or done.stdout).splitlines() if x.startswith("ERROR")]
            results[str(pin)] = lines[0][:160] if lines else f"no wheel (pip exited {done.returncode})"
    return results


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    return email.parser.Parser().parsestr(wheel.read(name).decode("utf-8", "replace"), headersonly=True)


def _spdx_terms(expression: str) -> list[str]:
    """The licence ids of an SPDX expression (`MIT OR Apache-2.0`, `(BSD-3-Clause AND MIT)`)."""
    cleaned = expression.replace("(", " ").replace(")", " ")
    return [t for t in re.split(r"\s+(?:AND|OR|WITH)\s+|\s*/\s*", cleaned.strip(), flags=re.IGNORECASE) if t]


def read_licence(wheel_path: str | Path) -> Licence:
    """The package's licence from its wheel's METADATA (module docstring)."""
    with zipfile.ZipFile(wheel_path) as wheel:
        meta = _metadata(wheel)
    expression = (meta.get("License-Expression") or "").strip()
    if expression:
        terms = _spdx_terms(expression)
        known = [PERMISSIVE.get(t.upper()) for t in terms]
        # An OR expression is usable when one choice is permissive; AND needs all of them.
        usable = any(known) if re.search(r"\sOR\s", expression, re.IGNORECASE) else all(known)
        spdx = next((k for k in known if k), None) if usable else None
        return Licence(spdx, expression, "License-Expression")
    field = (meta.get("License") or "").strip()
    if field and "\n" not in field and len(field) < 80:
        spdx = PERMISSIVE.get(field.upper().removesuffix(" LICENSE").strip()) or PERMISSIVE.get(field.upper())
        if spdx:
            return Licence(spdx, field, "License")
    classifiers = [
        c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")
    ]
    classifiers = [c for c in classifiers if c != "OSI Approved"]
    if classifiers:
        known = [CLASSIFIERS.get(c) for c in classifiers]
        spdx = known[0] if all(known) else None
        return Licence(spdx, "; ".join(classifiers), "classifier")
    return Licence(None, field[:80] if field else "", "none")


def _kept_source(name: str) -> bool:
    parts = name.split("/")
    if not name.endswith(".py") or any(".dist-info" in p or p[-5:] == ".data" for p in parts):
        return False
    if any(p in SKIPPED_DIRS for p in parts[:-1]):
        return False
    leaf = parts[-1]
    return not (leaf.startswith("test_") or leaf.endswith("_test.py") or leaf == "conftest.py")


def extract(wheel_path: str | Path, dest: str | Path) -> tuple[int, int]:
    """Unpack the wheel's kept `.py` files and licence files into `dest`; returns (files, bytes)."""
    dest = Path(dest)
    files = size = 0
    with zipfile.ZipFile(wheel_path) as wheel:
        for info in wheel.infolist():
            name = info.filename
            is_licence = ".dist-info/" in name and LICENCE_FILE.search(name.rsplit("/", 1)[-1])
            if not (_kept_source(name) or is_licence):
                continue
            target = dest / ("LICENSES/" + name.rsplit("/", 1)[-1] if is_licence else name)
            if ".." in Path(name).parts:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(wheel.read(info))
            if not is_licence:
                files += 1
                size += info.file_size
    return files, size


def prepare(pins: Iterable[Pin], wheels: str | Path, packages: str | Path) -> tuple[list[dict], list[dict]]:
    """Download (unless cached), read each licence and unpack the permissive ones under `packages`
    (one folder a package, with `package.json`). Returns (kept, excluded) rows for the manifest."""
    import json

    pins = list(pins)
    wheels, packages = Path(wheels), Path(packages)
    fetched = download(pins, wheels)
    kept, excluded = [], []
    for pin in pins:
        wheel = wheel_for(pin, wheels)
        if wheel is None:
            excluded.append({"package": pin.name, "version": pin.version, "reason": fetched[str(pin)]})
            continue
        licence = read_licence(wheel)
        if licence.spdx is None:
            declared = " ".join(licence.declared.split())[:80] or "none"
            reason = f"licence not permissive or not stated ({licence.source}: {declared})"
            excluded.append({"package": pin.name, "version": pin.version, "reason": reason})
            continue
        dest = packages / _normalise(pin.name)
        if not (dest / "package.json").is_file():
            files, _ = extract(wheel, dest)
            info = {
                "name": pin.name,
                "version": pin.version,
                "licence": licence.spdx,
                "declared": licence.declared,
                "licence_source": licence.source,
                "wheel": wheel.name,
                "python_files": files,
            }
            (dest / "package.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        kept.append({"package": pin.name, "version": pin.version, "licence": licence.spdx})
    return kept, excluded
