"""What ``nnunet_blob evaluate`` computes: one frozen set of options, checked once, recorded in the summary.

The defaults reproduce the evaluation without options (overlap detection, NaN for empty cases, no lesion-wise
BraTS scores, no confidences). Every check raises ValueError naming the option and the fix.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

from nnunet_blob.instances.connectivity import CONNECTIVITIES
from nnunet_blob.instances.matching import MATCH_METRICS

MATCHINGS = ("overlap", "one-to-one")
EMPTY_CASES = ("nan", "one")
#: edges (ml) of the reference-lesion volume bins: < 0.01, 0.01-0.1, 0.1-1, 1-10, >= 10 ml (MS lesions, metastases)
DEFAULT_SIZE_BINS_ML = (0.01, 0.1, 1.0, 10.0)
#: BraTS 2023 lesion-wise rules per challenge: (dilation iterations of the reference, lesions of at most this
#: volume in mm^3 are dropped), as the challenge's ``get_challenge_parameters``
BRATS_PRESETS = {
    "brats-gli": (3, 50.0), "brats-ssa": (3, 50.0), "brats-ped": (3, 50.0), "brats-men": (1, 50.0),
    "brats-met": (1, 2.0),
}
#: false positives per case at which the FROC sensitivity is read (1/8 ... 8)
FROC_FP_PER_CASE = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class EvaluationOptions:
    tolerance_mm: float = 1.0
    connectivity: int = 26
    matching: str = "overlap"
    match_metric: str = "iou"
    match_threshold: float = 0.5
    empty_case: str = "nan"
    size_bins_ml: tuple[float, ...] = DEFAULT_SIZE_BINS_ML
    gt_dilation: int | None = None  # BraTS lesion-wise scores when set
    min_lesion_volume_mm3: float = 0.0
    cc_dice: bool = False
    confidence: bool = False  # candidates' confidences from nnU-Net's probabilities (PRED_FOLDER/<case>.npz)
    detection_iou: float = 0.1
    allow_geometry_mismatch: bool = False
    cell_scores: bool = False  # AP over IoU 0.5:0.05:0.95 (2018 Data Science Bowl), F1/precision/recall at 0.5
    reference_instances: str | None = None  # folder of the reference cases' instance maps (else components)
    prediction_instances: str | None = None  # folder of the predicted cases' instance maps (else components)
    instance_inputs: bool = False  # the reference and prediction files are instance maps of one class (label 1)
    froc_fp_per_case: tuple[float, ...] = field(default=FROC_FP_PER_CASE)

    def __post_init__(self):
        self._check_matching()
        self._check_size_bins()
        self._check_lesion_rules()
        if self.instance_inputs and (self.reference_instances or self.prediction_instances):
            raise ValueError("--instance-inputs: the reference and prediction files are the instance maps already; "
                             "drop --reference-instances and --prediction-instances")

    def _check_matching(self) -> None:
        """How components are found and paired: connectivity, tolerance, matching rule and its threshold."""
        if self.connectivity not in CONNECTIVITIES:
            raise ValueError(f"--connectivity must be one of {CONNECTIVITIES}, got {self.connectivity}")
        if self.tolerance_mm < 0:
            raise ValueError(f"--tolerance-mm must be >= 0, got {self.tolerance_mm}")
        if self.matching not in MATCHINGS:
            raise ValueError(f"--matching must be one of {MATCHINGS}, got {self.matching!r}")
        if self.match_metric not in MATCH_METRICS:
            raise ValueError(f"--match-metric must be one of {MATCH_METRICS}, got {self.match_metric!r}")
        if not 0.0 < self.match_threshold <= 1.0:
            raise ValueError(f"--match-threshold must be in (0, 1], got {self.match_threshold}; IoU and Dice lie in "
                             f"[0, 1] and a pair must overlap")
        if self.empty_case not in EMPTY_CASES:
            raise ValueError(f"--empty-case must be one of {EMPTY_CASES}, got {self.empty_case!r}")
        if not 0.0 < self.detection_iou <= 1.0:
            raise ValueError(f"--detection-iou must be in (0, 1], got {self.detection_iou}")

    def _check_size_bins(self) -> None:
        """The volume-bin edges: increasing positive floats (stored as a tuple of floats)."""
        bins = tuple(float(b) for b in self.size_bins_ml)
        if not bins or any(b <= 0 for b in bins) or any(b >= c for b, c in pairwise(bins)):
            raise ValueError(f"--size-bins must be increasing positive volumes in ml, e.g. 0.01 0.1 1 10; got "
                             f"{list(self.size_bins_ml)}")
        object.__setattr__(self, "size_bins_ml", bins)

    def _check_lesion_rules(self) -> None:
        """The BraTS lesion-wise rules: dilation and smallest lesion volume, the latter only with the former."""
        if self.gt_dilation is not None and self.gt_dilation < 0:
            raise ValueError(f"--gt-dilation must be >= 0 iterations, got {self.gt_dilation}")
        if self.min_lesion_volume_mm3 < 0:
            raise ValueError(f"--min-lesion-volume must be >= 0 mm^3, got {self.min_lesion_volume_mm3}")
        if self.gt_dilation is None and self.min_lesion_volume_mm3 > 0:
            raise ValueError("--min-lesion-volume belongs to the BraTS lesion-wise scores: add --gt-dilation N "
                             "(0 for none) or a --preset")

    @property
    def brats(self) -> bool:
        return self.gt_dilation is not None

    def size_bin_names(self) -> list[str]:
        """Names of the volume bins: ``<0.01ml``, ``0.01-0.1ml``, ..., ``>=10ml``."""
        edges = self.size_bins_ml
        return ([f"<{edges[0]:g}ml"] + [f"{a:g}-{b:g}ml" for a, b in pairwise(edges)]
                + [f">={edges[-1]:g}ml"])

    def settings(self) -> dict:
        """The options as the summary records them."""
        data = asdict(self)
        data["size_bins_ml"] = list(self.size_bins_ml)
        data["froc_fp_per_case"] = list(self.froc_fp_per_case)
        return data


def options_from_arguments(*, preset: str | None = None, gt_dilation: int | None = None,
                           min_lesion_volume: float | None = None, matching: str | None = None,
                           match_metric: str | None = None, match_threshold: float | None = None,
                           confidence: bool = False, detection_iou: float | None = None,
                           size_bins: list[float] | None = None, cell_scores: bool | None = None,
                           **kwargs) -> EvaluationOptions:
    """Options from the command line's values (None: not given), refusing combinations that cannot apply.

    With instance maps (``reference_instances``, ``prediction_instances`` or ``instance_inputs``) the matching
    defaults to one-to-one and the cell scores are computed; otherwise overlap detection without them.
    """
    instances = bool(kwargs.get("reference_instances") or kwargs.get("prediction_instances")
                     or kwargs.get("instance_inputs"))
    if matching is None:
        matching = "one-to-one" if instances else "overlap"
    if cell_scores is None:
        cell_scores = instances
    if preset is not None:
        gt_dilation, min_lesion_volume = _preset_rules(preset, gt_dilation, min_lesion_volume)
    if matching != "one-to-one" and (match_metric is not None or match_threshold is not None):
        raise ValueError("--match-metric and --match-threshold apply to --matching one-to-one; add it or drop them")
    if not confidence and detection_iou is not None:
        raise ValueError("--detection-iou applies to --confidence (candidates scored from nnU-Net's "
                         "probabilities); add --confidence or drop it")
    given: dict[str, Any] = {"match_metric": match_metric, "match_threshold": match_threshold,
                             "detection_iou": detection_iou,
                             "size_bins_ml": None if size_bins is None else tuple(size_bins)}
    extra = {name: value for name, value in given.items() if value is not None}  # the others keep their defaults
    return EvaluationOptions(matching=matching, gt_dilation=gt_dilation,
                             min_lesion_volume_mm3=0.0 if min_lesion_volume is None else min_lesion_volume,
                             confidence=confidence, cell_scores=cell_scores, **extra, **kwargs)


def _preset_rules(preset: str, gt_dilation: int | None, min_lesion_volume: float | None) -> tuple[int, float]:
    """The BraTS preset's (dilation, smallest lesion volume); ValueError when the preset is unknown or the two
    options are given as well."""
    if preset not in BRATS_PRESETS:
        raise ValueError(f"--preset must be one of {sorted(BRATS_PRESETS)}, got {preset!r}")
    if gt_dilation is not None or min_lesion_volume is not None:
        raise ValueError(f"--preset {preset} sets --gt-dilation and --min-lesion-volume; give either the preset "
                         f"or the two options")
    return BRATS_PRESETS[preset]
