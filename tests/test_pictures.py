"""Detection pictures of ``nnunet_blob evaluate --png`` read as a person reads them: a legend for each colour, the
projection axis of each panel, and an object hidden behind another one in one projection still visible."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

GREEN, RED, BLUE = (0, 255, 0), (255, 0, 0), (0, 0, 255)


def write(path, arr):
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """One case through the real command: a found object, a missed one behind it along axis 0 (inside the found
    one's footprint in that projection, apart from it along z), and a false positive."""
    root = tmp_path_factory.mktemp("pictures")
    for sub in ("gt", "pred", "images"):
        (root / sub).mkdir()
    ref = np.zeros((24, 24, 24), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:10, 4:16, 4:16] = 1  # found
    pred[3:9, 5:15, 5:15] = 1
    ref[14:18, 8:11, 8:11] = 1  # missed, behind the found one when looking along axis 0
    pred[20:23, 18:22, 18:22] = 1  # false positive
    write(root / "gt" / "case.nii.gz", ref)
    write(root / "pred" / "case.nii.gz", pred)
    write(root / "images" / "case_0000.nii.gz", np.random.default_rng(0).random(ref.shape).astype(np.float32))
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet_blob")
    done = subprocess.run([exe, "evaluate", root / "gt", root / "pred", "-l", "1", "-o", root / "s.json", "--png",
                           root / "png", "--images", root / "images"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    png = Image.open(root / "png" / "case.png")
    return np.asarray(png.convert("RGB")), png.info


def colours(pixels: np.ndarray) -> set:
    return {tuple(int(v) for v in c) for c in pixels.reshape(-1, 3)}


def test_legend_names_each_colour_and_the_axes(picture):
    rgb, info = picture
    data = json.loads(info["nnunet_blob"])
    assert set(data["legend"]) == {"green", "red", "blue"}
    assert "found" in data["legend"]["green"] and "missed" in data["legend"]["red"]
    assert "false positive" in data["legend"]["blue"]
    assert "green: found" in info["Description"] and "projections along each array axis" in info["Description"]
    panels = data["panels"]
    assert [(p["axis"], p["rows_axis"], p["columns_axis"]) for p in panels] == [(0, 1, 2), (1, 0, 2), (2, 0, 1)]
    # the legend's colour patches: every colour also appears outside the panels
    outside = np.ones(rgb.shape[:2], bool)
    for p in panels:
        x0, y0, x1, y1 = p["box"]
        outside[y0:y1, x0:x1] = False
    assert {GREEN, RED, BLUE} <= colours(rgb[outside])


def test_every_object_is_visible_in_every_projection(picture):
    rgb, info = picture
    for p in json.loads(info["nnunet_blob"])["panels"]:
        x0, y0, x1, y1 = p["box"]
        assert p["objects"] == {"green": 1, "red": 1, "blue": 1}
        # the missed object is drawn along axis 0 too, where a plain projection hides it behind the found one
        assert {GREEN, RED, BLUE} <= colours(rgb[y0:y1, x0:x1]), p
