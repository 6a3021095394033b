"""``postprocessing_instances.json``: the chosen postprocessing of a model, self-contained.

Besides the settings (:class:`~nnunet_blob.postprocessing.rules.Setting`, one per foreground class or region, in the
dataset's order) the file holds what applying them needs without the trained model's folder: the labels or regions
(with ``regions_class_order``), the ignore label, the file ending, nnU-Net's reader/writer class and the
connectivity of the components; and, for the record, the metric, the decision rule and the tuning's numbers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_blob.files import atomic_write_json
from nnunet_blob.nnunet_internals import LabelLayout
from nnunet_blob.postprocessing.rules import Setting

#: the file's name, next to nnU-Net's ``postprocessing.pkl``
FILE_NAME = "postprocessing_instances.json"
#: the value of the file's ``format`` key
FORMAT = "nnunet_blob postprocessing 1"


class DecisionError(ValueError):
    """Input that the postprocessing, the configuration choice or the export cannot use; the message names the file
    or case and the fix."""


def _key_to_json(label_or_region):
    return list(label_or_region) if isinstance(label_or_region, tuple) else int(label_or_region)


def _key_from_json(value):
    return tuple(int(v) for v in value) if isinstance(value, list) else int(value)


@dataclass(frozen=True)
class PostprocessingFile:
    """The content of a ``postprocessing_instances.json``."""

    settings: tuple[Setting, ...]
    layout: LabelLayout
    file_ending: str
    reader_writer: str
    connectivity: int = 26
    record: dict = field(default_factory=dict)  # metric, decision rule, tuning numbers, source

    @property
    def uses_probabilities(self) -> bool:
        return any(s.threshold is not None for s in self.settings)

    @property
    def changes_nothing(self) -> bool:
        return all(s.changes_nothing for s in self.settings)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "settings": [{"label_or_region": _key_to_json(s.label_or_region), "min_volume_mm3": s.min_volume_mm3,
                          "threshold": s.threshold, "description": s.describe()} for s in self.settings],
            "labels_or_regions": [_key_to_json(k) for k in self.layout.labels_or_regions],
            "regions_class_order": None if self.layout.regions_class_order is None else
            list(self.layout.regions_class_order),
            "ignore_label": self.layout.ignore_label,
            "file_ending": self.file_ending,
            "image_reader_writer": self.reader_writer,
            "connectivity": self.connectivity,
            **self.record,
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_json())
        return path


def read_postprocessing(path: str | Path) -> PostprocessingFile:
    """Read and check a ``postprocessing_instances.json``; DecisionError naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DecisionError(f"{path} does not exist; make it with nnunet_blob tune-postprocessing "
                            f"(or find-best)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DecisionError(f"{path} is not a readable JSON file ({e}); make it again with nnunet_blob "
                            f"tune-postprocessing") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DecisionError(f"{path} is not a postprocessing file of nnunet_blob (format {found!r}, expected "
                            f"{FORMAT!r}); nnU-Net's own postprocessing.pkl is applied with "
                            f"nnUNetv2_apply_postprocessing")
    try:
        keys = tuple(_key_from_json(k) for k in data["labels_or_regions"])
        order = data["regions_class_order"]
        layout = LabelLayout(keys, None if order is None else tuple(int(c) for c in order), data["ignore_label"])
        settings = tuple(Setting(_key_from_json(s["label_or_region"]), float(s["min_volume_mm3"]),
                                 None if s["threshold"] is None else float(s["threshold"]))
                         for s in data["settings"])
        known = {"format", "settings", "labels_or_regions", "regions_class_order", "ignore_label", "file_ending",
                 "image_reader_writer", "connectivity"}
        result = PostprocessingFile(settings, layout, str(data["file_ending"]), str(data["image_reader_writer"]),
                                    int(data["connectivity"]), {k: v for k, v in data.items() if k not in known})
    except (KeyError, TypeError, ValueError) as e:
        raise DecisionError(f"{path} is damaged or incomplete ({type(e).__name__}: {e}); make it again with "
                            f"nnunet_blob tune-postprocessing") from e
    unknown = [s.label_or_region for s in settings if s.label_or_region not in keys]
    if unknown:
        raise DecisionError(f"{path}: settings for {unknown}, which are not among the dataset's classes or regions "
                            f"{list(keys)}; make the file again with nnunet_blob tune-postprocessing")
    return result
