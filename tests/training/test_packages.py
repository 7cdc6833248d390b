"""PyPI package sources for the corpus: pins, licences read from wheel metadata, unpacking, manifest."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from engine.training.corpus import STDLIB, collect, corpus_key, near_duplicate_free, package_table
from engine.training.packages import DEFAULT_PINS, Pin, extract, prepare, read_licence, read_pins

CODE = (
    'def add(a, b):\n    """The sum."""\n    return a + b\n\n\nclass Box:\n    size = 0\n    name = "box"\n'
)


def make_wheel(folder, name, version, headers, files):
    """A minimal wheel: METADATA with `headers`, the given files and a licence file."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n" + "".join(
        f"{k}: {v}\n" for k, v in headers
    )
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}-{version}.dist-info/METADATA", meta)
        wheel.writestr(f"{name}-{version}.dist-info/licenses/LICENSE", "Permission is hereby granted")
        for inner, text in files.items():
            wheel.writestr(inner, text)
    return path


@pytest.mark.parametrize(
    ("headers", "spdx"),
    [
        ([("License-Expression", "MIT")], "MIT"),
        ([("License-Expression", "Apache-2.0 OR GPL-2.0-only")], "Apache-2.0"),
        ([("License-Expression", "MIT AND GPL-3.0-or-later")], None),
        ([("License-Expression", "GPL-3.0-only")], None),
        ([("License", "BSD-3-Clause")], "BSD-3-Clause"),
        ([("Classifier", "License :: OSI Approved :: Apache Software License")], "Apache-2.0"),
        ([("Classifier", "License :: OSI Approved :: GNU General Public License v3 (GPLv3)")], None),
        ([("Classifier", "Programming Language :: Python :: 3")], None),
        ([], None),
    ],
)
def test_licence_is_read_from_the_metadata_and_only_permissive_ones_are_kept(tmp_path, headers, spdx):
    wheel = make_wheel(tmp_path, "pkg", "1.0", headers, {"pkg/__init__.py": CODE})
    assert read_licence(wheel).spdx == spdx


def test_extract_keeps_package_code_and_licence_files_but_not_tests_or_vendored_copies(tmp_path):
    files = {
        "pkg/__init__.py": CODE,
        "pkg/core.py": CODE,
        "pkg/tests/test_core.py": CODE,
        "pkg/_vendor/other.py": CODE,
        "pkg/conftest.py": CODE,
        "pkg/data.json": "{}",
    }
    wheel = make_wheel(tmp_path, "pkg", "1.0", [("License-Expression", "MIT")], files)
    count, size = extract(wheel, tmp_path / "out")
    kept = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()
    )
    assert kept == ["LICENSES/LICENSE", "pkg/__init__.py", "pkg/core.py"]
    assert (count, size) == (2, 2 * len(CODE))


def test_prepare_unpacks_permissive_wheels_and_lists_the_rest_with_the_reason(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "good", "1.0", [("License-Expression", "MIT")], {"good/a.py": CODE})
    make_wheel(wheels, "viral", "2.0", [("License-Expression", "GPL-3.0-only")], {"viral/a.py": CODE})
    kept, excluded = prepare([Pin("good", "1.0"), Pin("viral", "2.0")], wheels, tmp_path / "packages")
    assert kept == [{"package": "good", "version": "1.0", "licence": "MIT"}]
    assert [e["package"] for e in excluded] == ["viral"] and "GPL-3.0-only" in excluded[0]["reason"]
    info = json.loads((tmp_path / "packages" / "good" / "package.json").read_text())
    assert info["licence"] == "MIT" and info["version"] == "1.0"

    stdlib = tmp_path / "stdlib"
    stdlib.mkdir()
    (stdlib / "mod.py").write_text(CODE.replace("add", "mul"))
    corpus = collect(stdlib, packages_dir=tmp_path / "packages", dedup_threshold=None)
    assert sorted(corpus_key(f) for f in corpus.files) == ["good/good/a.py", "mod.py"]
    assert corpus.read(next(f for f in corpus.files if f.source == "good")) == CODE
    rows = package_table(corpus, count_tokens=len)
    assert [(r["package"], r["licence"], r["files"], r["tokens"]) for r in rows] == [
        (STDLIB, "PSF-2.0", 1, len(CODE)),
        ("good", "MIT", 1, len(CODE)),
    ]


def test_near_duplicates_are_dropped_and_the_first_copy_kept():
    base = "\n".join(f"value_{i} = compute({i}, {i * 7})" for i in range(60))
    edited = base.replace("value_3 = compute(3, 21)", "value_3 = compute(3, 22)")
    other = "\n".join(f"name_{i} = other({i})" for i in range(60))
    assert near_duplicate_free([base, other, edited, base], threshold=0.8) == [0, 1]
    assert near_duplicate_free([base, other], threshold=0.8) == [0, 1]


def test_pins_are_name_equals_version():
    pins = read_pins(DEFAULT_PINS)
    assert len(pins) > 100 and all(p.name and p.version for p in pins)
    assert len({p.name for p in pins}) == len(pins)


def _pypi_reachable() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "six", "--disable-pip-version-check"],
        capture_output=True,
        timeout=60,
    )
    return done.returncode == 0


@pytest.mark.slow
def test_a_slice_of_the_committed_manifest_reproduces_from_pypi(tmp_path):
    """Two small pinned packages, downloaded again: the same licence, files and bytes as committed."""
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable from this machine")
    from engine.training.data import MANIFEST_PATH

    committed = {r["package"]: r for r in json.loads(MANIFEST_PATH.read_text())["packages"]}
    names = [n for n in ("six", "idna") if n in committed]
    assert names, "the committed manifest lists neither six nor idna"
    pins = [Pin(n, committed[n]["version"]) for n in names]
    prepare(pins, tmp_path / "wheels", tmp_path / "packages")
    empty = tmp_path / "empty"
    empty.mkdir()
    corpus = collect(empty, packages_dir=tmp_path / "packages", dedup_threshold=None)
    rows = {r["package"]: r for r in package_table(corpus)}
    for name in names:
        assert (rows[name]["licence"], rows[name]["files"]) == (
            committed[name]["licence"],
            committed[name]["files"],
        )


def test_a_wheel_is_found_whatever_separator_its_name_uses(tmp_path):
    from engine.training.packages import wheel_for

    (tmp_path / "jaraco.classes-3.4.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "typing_extensions-4.16.0-py3-none-any.whl").write_bytes(b"")
    assert wheel_for(Pin("jaraco-classes", "3.4.0"), tmp_path).name.startswith("jaraco.classes")
    assert wheel_for(Pin("typing-extensions", "4.16.0"), tmp_path) is not None
    assert wheel_for(Pin("typing-extensions", "4.15.0"), tmp_path) is None
