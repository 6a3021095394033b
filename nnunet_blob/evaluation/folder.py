"""Evaluate a reference/prediction folder pair the way ``nnunetv2/evaluation/evaluate_predictions.py`` does.

File ending, reader/writer class, labels or regions and the ignore label come from dataset.json and the plans
through nnU-Net's own functions; cases are paired by the prediction folder's file names (as
``compute_metrics_on_folder``); the summary keeps nnU-Net's ``summary.json`` layout (``metric_per_case``,
``mean``, ``foreground_mean``) and adds ``pooled_instances``, ``nan_cases`` and the settings.
"""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json, subfiles
from nnunetv2.imageio.reader_writer_registry import (
    determine_reader_writer_from_dataset_json,
    determine_reader_writer_from_file_ending,
)
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from tqdm import tqdm

from nnunet_blob.evaluation.metrics import COUNT_METRICS, label_metrics, spatial_view
from nnunet_blob.instances.detection import instance_scores
from nnunet_blob.io import atomic_write_json
from nnunet_blob.nnunet_internals import label_or_region_key

#: instance counts added over the cases in ``pooled_instances``
POOLED = ("n_ref_instances", "n_pred_instances", "TP_ref_instances", "TP_pred_instances", "FN_instances",
          "FP_instances")


def evaluate_case(ref_file: str, pred_file: str, reader_writer, labels_or_regions, ignore_label=None,
                  tolerance_mm: float = 1.0, connectivity: int = 26, png_file: str | None = None,
                  image_file: str | None = None) -> dict:
    """Metrics of one case, keyed like nnU-Net's ``compute_metrics`` result; optionally writes its PNG."""
    seg_ref, props = reader_writer.read_seg(ref_file)
    seg_pred, _ = reader_writer.read_seg(pred_file)
    if seg_ref.shape != seg_pred.shape:
        raise ValueError(f"{pred_file}: shape {seg_pred.shape} differs from the reference {ref_file} "
                         f"{seg_ref.shape}; predictions must be in the reference's image space")
    ref, spacing = spatial_view(seg_ref, props["spacing"])
    pred, _ = spatial_view(seg_pred, props["spacing"])
    result: dict = {"reference_file": ref_file, "prediction_file": pred_file, "metrics": {}}
    comps = {}
    for r in labels_or_regions:
        result["metrics"][r], comps[r] = label_metrics(ref, pred, r, spacing, ignore_label, tolerance_mm,
                                                       connectivity, return_components=True)
    if png_file is not None:
        from nnunet_blob.evaluation.pictures import case_png

        image = spatial_view(reader_writer.read_images((image_file,))[0][:1], props["spacing"])[0] \
            if image_file else None
        case_png(png_file, image, comps, result["metrics"], title=os.path.basename(ref_file))
    return result


def _evaluate_case_star(args):
    return evaluate_case(*args)



def summarize(results: list[dict], labels_or_regions, tolerance_mm: float, connectivity: int) -> dict:
    """nnU-Net's means (nanmean per label, mean over labels) plus pooled instance counts and NaN counts."""
    metric_names = list(results[0]["metrics"][labels_or_regions[0]].keys())
    means, nan_cases, pooled = {}, {}, {}
    for r in labels_or_regions:
        values = {m: np.array([c["metrics"][r][m] for c in results], float) for m in metric_names}
        means[r] = {m: float(np.nanmean(v)) if not np.isnan(v).all() else float("nan") for m, v in values.items()}
        nan_cases[r] = {m: int(np.isnan(v).sum()) for m, v in values.items()}
        counts = np.array([[c["metrics"][r][key] for key in COUNT_METRICS] for c in results], np.int64)
        pooled[r] = {m: int(values[m].sum()) for m in POOLED} | instance_scores(counts)
    foreground_mean = {m: float(np.mean([means[r][m] for r in labels_or_regions if r not in (0, "0")]))
                       for m in metric_names}
    return {"metric_per_case": results, "mean": means, "foreground_mean": foreground_mean,
            "pooled_instances": pooled, "nan_cases": nan_cases,
            "settings": {"surface_dice_tolerance_mm": tolerance_mm, "connectivity": connectivity}}


def json_keys(summary: dict) -> dict:
    """The summary with label and region keys spelled as nnU-Net's ``save_summary_json`` spells them (``1``,
    ``(1, 2)``)."""
    data = dict(summary)
    for key in ("mean", "pooled_instances", "nan_cases"):
        if key in data:
            data[key] = {label_or_region_key(k): v for k, v in data[key].items()}
    if "metric_per_case" in data:
        data["metric_per_case"] = [dict(c, metrics={label_or_region_key(k): v for k, v in c["metrics"].items()})
                                   for c in data["metric_per_case"]]
    return data


def pair_cases(folder_ref: str, folder_pred: str, file_ending: str, chill: bool = False) -> list[tuple[str, str]]:
    """(reference, prediction) file pairs, by the prediction folder's file names as nnU-Net pairs them."""
    files_pred = subfiles(folder_pred, suffix=file_ending, join=False)
    files_ref = subfiles(folder_ref, suffix=file_ending, join=False)
    if not files_pred:
        raise FileNotFoundError(f"no prediction files ending in {file_ending!r} in {folder_pred}")
    missing_ref = sorted(set(files_pred) - set(files_ref))
    if missing_ref:
        raise FileNotFoundError(f"predictions without a reference in {folder_ref}: {missing_ref[:5]}; "
                                f"remove them or point GT_FOLDER to the right labels folder")
    missing_pred = sorted(set(files_ref) - set(files_pred))
    if missing_pred and not chill:
        raise FileNotFoundError(f"references without a prediction in {folder_pred}: {missing_pred[:5]}; "
                                f"predict them or pass --chill to evaluate only the predicted cases")
    return [(os.path.join(folder_ref, f), os.path.join(folder_pred, f)) for f in files_pred]


def evaluate_folder(folder_ref: str, folder_pred: str, output_file: str | Path | None, reader_writer,
                    file_ending: str, labels_or_regions, ignore_label: int | None = None, num_processes: int = 1,
                    tolerance_mm: float = 1.0, connectivity: int = 26, chill: bool = False,
                    png_dir: str | None = None, images_dir: str | None = None) -> dict:
    """Evaluate all cases in parallel (spawn pool, tqdm progress bar); write the summary if ``output_file``."""
    pairs = pair_cases(folder_ref, folder_pred, file_ending, chill)
    jobs = []
    for ref_file, pred_file in pairs:
        case = os.path.basename(ref_file)[: -len(file_ending)]
        png = os.path.join(png_dir, case + ".png") if png_dir else None
        image = os.path.join(images_dir, case + "_0000" + file_ending) if images_dir else None
        if image is not None and not os.path.isfile(image):
            raise FileNotFoundError(f"case {case}: image {image} not found; --images must be nnU-Net's raw "
                                    f"imagesTr/imagesTs folder (channel 0000)")
        jobs.append((ref_file, pred_file, reader_writer, list(labels_or_regions), ignore_label, tolerance_mm,
                     connectivity, png, image))
    if png_dir:
        os.makedirs(png_dir, exist_ok=True)
    desc = f"evaluating {len(jobs)} cases"
    if num_processes <= 1:
        results = [evaluate_case(*j) for j in tqdm(jobs, desc=desc)]
    else:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            results = list(tqdm(pool.imap(_evaluate_case_star, jobs), total=len(jobs), desc=desc))
    summary = summarize(results, list(labels_or_regions), tolerance_mm, connectivity)
    if output_file is not None:
        Path(output_file).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output_file, json_keys(summary))
    return summary


def evaluate_folder_from_json(folder_ref: str, folder_pred: str, dataset_json: str | dict, plans: str | dict,
                              output_file: str | Path | None = None, **kwargs) -> dict:
    """As nnU-Net's ``compute_metrics_on_folder2``: everything from dataset.json and the plans.

    ``output_file`` defaults to ``folder_pred/summary_instances.json``.
    """
    dataset_json = load_json(dataset_json) if not isinstance(dataset_json, dict) else dataset_json
    file_ending = dataset_json["file_ending"]
    examples = subfiles(folder_ref, suffix=file_ending, join=True)
    if not examples:
        raise FileNotFoundError(f"no reference files ending in {file_ending!r} (dataset.json file_ending) "
                                f"in {folder_ref}")
    rw = determine_reader_writer_from_dataset_json(dataset_json, examples[0])()
    lm = PlansManager(plans).get_label_manager(dataset_json)
    regions = lm.foreground_regions if lm.has_regions else lm.foreground_labels
    if output_file is None:
        output_file = os.path.join(folder_pred, "summary_instances.json")
    return evaluate_folder(folder_ref, folder_pred, output_file, rw, file_ending, regions, lm.ignore_label,
                           **kwargs)


def evaluate_folder_simple(folder_ref: str, folder_pred: str, labels, ignore_label: int | None = None,
                           output_file: str | Path | None = None, **kwargs) -> dict:
    """As nnU-Net's ``compute_metrics_on_folder_simple``: reader from the file ending, labels given."""
    examples = subfiles(folder_ref, join=True)
    if not examples:
        raise FileNotFoundError(f"no reference files in {folder_ref}")
    file_ending = ".nii.gz" if examples[0].endswith(".nii.gz") else os.path.splitext(examples[0])[-1]
    rw = determine_reader_writer_from_file_ending(file_ending, examples[0], allow_nonmatching_filename=True,
                                                  verbose=False)()
    if output_file is None:
        output_file = os.path.join(folder_pred, "summary_instances.json")
    return evaluate_folder(folder_ref, folder_pred, output_file, rw, file_ending, list(labels), ignore_label,
                           **kwargs)


def evaluate_validation_folder(validation_folder: str | Path, gt_folder: str | Path, dataset_json: str | dict,
                               plans: str | dict, num_processes: int = 1, tolerance_mm: float = 1.0,
                               connectivity: int = 26) -> Path:
    """Write ``summary_instances.json`` next to nnU-Net's ``summary.json`` in a fold's validation folder.

    For the trainers' final validation: call after nnU-Net's ``perform_actual_validation`` with
    ``gt_folder`` = ``nnUNet_preprocessed/DatasetXXX/gt_segmentations``, the dataset.json and plans (paths or
    dicts). Only the cases nnU-Net predicted are evaluated (the fold's validation cases). Returns the file.
    """
    out = Path(validation_folder) / "summary_instances.json"
    evaluate_folder_from_json(str(gt_folder), str(validation_folder), dataset_json, plans, out,
                              num_processes=num_processes, tolerance_mm=tolerance_mm, connectivity=connectivity,
                              chill=True)
    return out
