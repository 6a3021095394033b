"""What a wheel and an sdist built from this checkout ship: the licence, the notice, py.typed and the start-up hook."""
from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "NOTICE",
           "nnunet_blob.pth")
# one process per build, as pip and build run them
BUILD = "import sys; from setuptools import build_meta as b; print('BUILT', getattr(b, sys.argv[1])(sys.argv[2]))"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("setuptools")
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "nnunet_blob", tree / "nnunet_blob", ignore=shutil.ignore_patterns("__pycache__"))
    built = []
    for hook in ("build_wheel", "build_sdist"):
        output = subprocess.run([sys.executable, "-c", BUILD, hook, str(out)], cwd=tree, capture_output=True,
                                text=True, check=True).stdout
        built += [out / line.split()[1] for line in output.splitlines() if line.startswith("BUILT ")]
    wheel, sdist = built
    with zipfile.ZipFile(wheel) as w, tarfile.open(sdist) as s:
        return w.namelist(), [name.split("/", 1)[1] for name in s.getnames() if "/" in name]


def test_wheel_ships_licence_notice_types_and_hook(built):
    wheel, _ = built
    assert {"nnunet_blob.pth", "nnunet_blob/py.typed", "nnunet_blob/instances/detection.py",
            "nnunet_blob/evaluation/_surfel_table.py"} <= set(wheel)
    licences = {Path(name).name for name in wheel if ".dist-info/licenses/" in name}
    assert licences == {"LICENSE", "NOTICE"}


def test_sdist_ships_licence_notice_types_and_hook(built):
    _, sdist = built
    assert {"LICENSE", "NOTICE", "nnunet_blob.pth", "nnunet_blob/py.typed"} <= set(sdist)


def apache_terms(licence: str) -> str:
    """The terms of an Apache License 2.0 text (sections 1 to 9), whitespace normalised; '' when it has none."""
    start, end = licence.find("TERMS AND CONDITIONS FOR USE"), licence.find("END OF TERMS AND CONDITIONS")
    return " ".join(licence[start:end].split()) if 0 <= start < end else ""


def test_licence_is_the_apache_2_text_the_metadata_declares_and_notice_names_the_surfel_table():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["license"] == "Apache-2.0"  # the SPDX identifier
    # LICENSE holds, word for word, the terms of the Apache-2.0 licence nnU-Net ships (an Apache-2.0 project)
    nnunet = distribution("nnunetv2")
    assert "License :: OSI Approved :: Apache Software License" in nnunet.metadata.get_all("Classifier")
    theirs = [f.read_text() for f in nnunet.files or () if f.name == "LICENSE"]
    assert theirs and apache_terms(theirs[0])
    assert apache_terms((ROOT / "LICENSE").read_text()) == apache_terms(theirs[0])
    notice = (ROOT / "NOTICE").read_text()
    assert "nnunet_blob/evaluation/_surfel_table.py" in notice and "Copyright 2018 Google" in notice
    assert "Copyright 2018 Google" in (ROOT / "nnunet_blob" / "evaluation" / "_surfel_table.py").read_text()
