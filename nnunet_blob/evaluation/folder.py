"""Evaluate a reference/prediction folder pair the way ``nnunetv2/evaluation/evaluate_predictions.py`` does.

File ending, reader/writer class, labels or regions and the ignore label come from dataset.json and the plans
through nnU-Net's own functions; cases are paired by the prediction folder's file names (as
``compute_metrics_on_folder``); the summary keeps nnU-Net's ``summary.json`` layout (``metric_per_case``,
``mean``, ``foreground_mean``) and adds ``pooled_instances``, ``nan_cases`` and the settings.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json, subfiles

from nnunet_blob.evaluation.checks import instance_ids, read_instances, read_pair, read_probabilities
from nnunet_blob.evaluation.confidence import average_precision, froc
from nnunet_blob.evaluation.lesions import panoptic_from_counts, pooled_cell_scores
from nnunet_blob.evaluation.metric_facts import SUMMED
from nnunet_blob.evaluation.metrics import COUNT_METRICS, label_evaluation, spatial_view
from nnunet_blob.evaluation.options import EvaluationOptions
from nnunet_blob.files import atomic_write_json
from nnunet_blob.instances.detection import instance_scores
from nnunet_blob.nnunet_internals import LabelLayout, label_or_region_key
from nnunet_blob.workers import run_cases


def evaluate_case(ref_file: str, pred_file: str, reader_writer, labels_or_regions, ignore_label=None,
                  tolerance_mm: float = 1.0, connectivity: int = 26, png_file: str | None = None,
                  image_file: str | None = None, options: EvaluationOptions | None = None,
                  allowed_labels=None, probabilities_file: str | None = None,
                  ref_instances_file: str | None = None, pred_instances_file: str | None = None) -> dict:
    """Metrics of one case, keyed like nnU-Net's ``compute_metrics`` result; optionally writes its PNG.

    ``options`` default to ``tolerance_mm`` and ``connectivity`` with everything else at its default. The pair is
    read with :func:`~nnunet_blob.evaluation.checks.read_pair` (``allowed_labels``: the declared labels, None to
    skip that check). With ``probabilities_file`` (nnU-Net's ``.npz``) the result also holds ``detections``, the
    entries of every label or region (:mod:`nnunet_blob.evaluation.confidence`). ``ref_instances_file`` and
    ``pred_instances_file`` are the case's instance maps (checked by
    :func:`~nnunet_blob.evaluation.checks.read_instances`); with ``options.instance_inputs`` the two files are
    instance maps of one class (label 1 = every object).
    """
    if options is None:
        options = EvaluationOptions(tolerance_mm=tolerance_mm, connectivity=connectivity)
    seg_ref, seg_pred, props = read_pair(reader_writer, ref_file, pred_file,
                                         None if options.instance_inputs else allowed_labels,
                                         options.allow_geometry_mismatch)
    case = _case_name(pred_file, reader_writer)
    instance_maps = [_instance_map(reader_writer, path, case, option, seg, seg_file, props, ignore_label, options)
                     for path, option, seg, seg_file in
                     ((ref_instances_file, "--reference-instances", seg_ref, ref_file),
                      (pred_instances_file, "--prediction-instances", seg_pred, pred_file))]
    if options.instance_inputs:
        seg_ref, seg_pred = (seg_ref != 0).astype(np.uint8), (seg_pred != 0).astype(np.uint8)
    ref, spacing = spatial_view(seg_ref, props["spacing"])
    pred, _ = spatial_view(seg_pred, props["spacing"])
    probabilities = None
    if probabilities_file is not None:
        case = os.path.basename(probabilities_file)[:-len(".npz")]
        probabilities = read_probabilities(probabilities_file, case, seg_ref.shape[1:])
    result: dict = {"reference_file": ref_file, "prediction_file": pred_file, "metrics": {}}
    comps, detections = {}, {}
    for index, r in enumerate(labels_or_regions):
        channel = None
        if probabilities is not None:
            channel = _probability_channel(probabilities, r, index, probabilities_file)
            channel = spatial_view(channel[None], props["spacing"])[0]
        result["metrics"][r], comps[r], detections[r] = label_evaluation(ref, pred, r, spacing, ignore_label, options,
                                                                          channel, *instance_maps)
    if probabilities is not None:
        result["detections"] = detections
    if png_file is not None:
        _write_png(png_file, reader_writer, image_file, props, comps, result["metrics"], ref_file)
    return result


def _instance_map(reader_writer, path: str | None, case: str, option: str, seg: np.ndarray, seg_file: str,
                  props: dict, ignore_label, options: EvaluationOptions) -> np.ndarray | None:
    """The spatial view of one side's instance map: the segmentation file itself with ``--instance-inputs``, the
    file at ``path`` (``option`` names it in errors), or None (connected components are matched instead)."""
    if options.instance_inputs:
        instances = instance_ids(seg, seg_file, case, "--instance-inputs")
    elif path is not None:
        instances = read_instances(reader_writer, path, case, option, seg, seg_file, props, ignore_label,
                                   options.allow_geometry_mismatch)
    else:
        return None
    return spatial_view(instances, props["spacing"])[0]


def _write_png(png_file: str, reader_writer, image_file: str | None, props: dict, comps: dict, metrics: dict,
               ref_file: str) -> None:
    """The case's picture (:func:`~nnunet_blob.evaluation.pictures.case_png`), over its image when one is given."""
    from nnunet_blob.evaluation.pictures import case_png

    image = spatial_view(reader_writer.read_images((image_file,))[0][:1], props["spacing"])[0] \
        if image_file else None
    case_png(png_file, image, comps, metrics, title=os.path.basename(ref_file))


def _case_name(path: str, reader_writer) -> str:
    """A file's case identifier: its name without the reader's file ending."""
    name = os.path.basename(path)
    endings = getattr(reader_writer, "supported_file_endings", ())
    return next((name[:-len(e)] for e in sorted(endings, key=len, reverse=True) if name.endswith(e)), name)


def _probability_channel(probabilities: np.ndarray, label_or_region, index: int, path) -> np.ndarray:
    """The probability of a label (softmax channel = label value) or region (sigmoid channel = its index among
    the regions; nnU-Net saves one channel per region)."""
    region = isinstance(label_or_region, (tuple, list))
    channel = index if region else int(label_or_region)
    if channel >= probabilities.shape[0]:
        raise ValueError(f"{path}: {probabilities.shape[0]} probability channels, none for label {label_or_region}; "
                         f"use the probabilities of this dataset's model")
    return probabilities[channel]


def _evaluate_case_star(args):
    return evaluate_case(*args[:-1], **args[-1])


def _pooled_lesions(results: list[dict], r, options: EvaluationOptions) -> dict:
    """The new pooled numbers of one label: FP components per case, the size bins, panoptic quality of the
    pooled matching, and FROC/AP when there are detection entries."""
    cases = [c["metrics"][r] for c in results]
    out: dict = {"FP_per_case": float(np.mean([m["FP_instances"] for m in cases])) if cases else float("nan")}
    for name in options.size_bin_names():
        n = int(sum(m[f"n_ref_{name}"] for m in cases))
        tp = int(sum(m[f"TP_ref_{name}"] for m in cases))
        out.update({f"n_ref_{name}": n, f"TP_ref_{name}": tp, f"IS_{name}": tp / n if n else float("nan")})
    if options.matching == "one-to-one":
        matched = int(sum(m["n_matched"] for m in cases))
        n_ref = int(sum(m["n_ref_instances"] for m in cases))
        n_pred = int(sum(m["n_pred_instances"] for m in cases))
        iou_sum = float(sum(m["SQ"] * m["n_matched"] for m in cases if m["n_matched"]))
        out.update({"n_matched": matched, **panoptic_from_counts(matched, n_ref, n_pred, iou_sum)})
    if options.cell_scores:
        out.update(pooled_cell_scores(cases))
    if options.brats:
        for key in ("lesion_wise_TP", "lesion_wise_FN", "lesion_wise_FP"):
            out[key] = int(sum(m[key] for m in cases))
    if all("detections" in c for c in results) and results:
        entries = [e for c in results for e in c["detections"][r]]
        out["FROC"] = froc(entries, len(results), options.froc_fp_per_case)
        out["AP"] = average_precision(entries)
        out["detection_iou"] = options.detection_iou
    return out


def summarize(results: list[dict], labels_or_regions, tolerance_mm: float = 1.0, connectivity: int = 26,
              options: EvaluationOptions | None = None) -> dict:
    """nnU-Net's means (nanmean per label, mean over labels) plus pooled instance counts and NaN counts."""
    if options is None:
        options = EvaluationOptions(tolerance_mm=tolerance_mm, connectivity=connectivity)
    metric_names = list(results[0]["metrics"][labels_or_regions[0]].keys())
    means, nan_cases, pooled = {}, {}, {}
    for r in labels_or_regions:
        values = {m: np.array([c["metrics"][r][m] for c in results], float) for m in metric_names}
        means[r] = {m: float(np.nanmean(v)) if not np.isnan(v).all() else float("nan") for m, v in values.items()}
        nan_cases[r] = {m: int(np.isnan(v).sum()) for m, v in values.items()}
        counts = np.array([[c["metrics"][r][key] for key in COUNT_METRICS] for c in results], np.int64)
        pooled[r] = {m: int(values[m].sum()) for m in SUMMED} | instance_scores(counts) | \
            _pooled_lesions(results, r, options)
    foreground_mean = {m: float(np.mean([means[r][m] for r in labels_or_regions if r not in (0, "0")]))
                       for m in metric_names}
    settings = {"surface_dice_tolerance_mm": options.tolerance_mm, "connectivity": options.connectivity}
    settings |= {k: v for k, v in options.settings().items() if k not in ("tolerance_mm", "connectivity")}
    return {"metric_per_case": results, "mean": means, "foreground_mean": foreground_mean,
            "pooled_instances": pooled, "nan_cases": nan_cases, "settings": settings}


def json_keys(summary: dict) -> dict:
    """The summary with label and region keys spelled as nnU-Net's ``save_summary_json`` spells them (``1``,
    ``(1, 2)``)."""
    data = dict(summary)
    for key in ("mean", "pooled_instances", "nan_cases"):
        if key in data:
            data[key] = {label_or_region_key(k): v for k, v in data[key].items()}
    if "metric_per_case" in data:
        cases = []
        for c in data["metric_per_case"]:
            case = dict(c, metrics={label_or_region_key(k): v for k, v in c["metrics"].items()})
            if "detections" in c:
                case["detections"] = {label_or_region_key(k): v for k, v in c["detections"].items()}
            cases.append(case)
        data["metric_per_case"] = cases
    return data


def _existing_folder(folder: str, role: str) -> None:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{role} {folder} is not a folder (it does not exist or is a file); give the folder "
                                f"of the {'reference' if role == 'GT_FOLDER' else 'predicted'} segmentations")


def _endings(folder: str) -> list[str]:
    """The file endings in a folder (``.nii.gz`` counted as one)."""
    endings = set()
    for name in os.listdir(folder):
        if os.path.isfile(os.path.join(folder, name)) and not name.startswith("."):
            stem, ending = os.path.splitext(name)
            endings.add(os.path.splitext(stem)[1] + ending if ending == ".gz" else ending or "(no ending)")
    return sorted(endings)


def pair_cases(folder_ref: str, folder_pred: str, file_ending: str, chill: bool = False) -> list[tuple[str, str]]:
    """(reference, prediction) file pairs, by the prediction folder's file names as nnU-Net pairs them."""
    _existing_folder(folder_ref, "GT_FOLDER")
    _existing_folder(folder_pred, "PRED_FOLDER")
    files_pred = subfiles(folder_pred, suffix=file_ending, join=False)
    files_ref = subfiles(folder_ref, suffix=file_ending, join=False)
    if not files_pred:
        raise FileNotFoundError(f"no prediction files ending in {file_ending!r} (the references' file ending) in "
                                f"{folder_pred}: it holds files ending in {_endings(folder_pred) or 'nothing'}, "
                                f"{folder_ref} files ending in {_endings(folder_ref) or 'nothing'}; write the "
                                f"predictions in the references' format (e.g. .nii.gz, not .nii)")
    missing_ref = sorted(set(files_pred) - set(files_ref))
    if missing_ref:
        raise FileNotFoundError(f"predictions without a reference in {folder_ref}: {missing_ref[:5]}; "
                                f"remove them or point GT_FOLDER to the right labels folder")
    missing_pred = sorted(set(files_ref) - set(files_pred))
    if missing_pred and not chill:
        raise FileNotFoundError(f"references without a prediction in {folder_pred}: {missing_pred[:5]}; "
                                f"predict them or pass --chill to evaluate only the predicted cases")
    return [(os.path.join(folder_ref, f), os.path.join(folder_pred, f)) for f in files_pred]


def _check_instance_options(options: EvaluationOptions, labels_or_regions) -> None:
    """ValueError/FileNotFoundError naming the option when the instance-map options cannot apply."""
    if options.instance_inputs and list(labels_or_regions) != [1]:
        raise ValueError(f"--instance-inputs: the files are instance maps of one class, evaluated as label 1; give "
                         f"-l 1 (got {list(labels_or_regions)})")
    for folder, option in ((options.reference_instances, "--reference-instances"),
                           (options.prediction_instances, "--prediction-instances")):
        if folder is not None and not os.path.isdir(folder):
            raise FileNotFoundError(f"{option} {folder} is not a folder; give the folder of the instance maps (one "
                                    f"per case, named as its label file)")


def _image_file(case: str, images_dir: str | None, file_ending: str) -> str | None:
    """The case's image (channel 0000) in ``--images``, or None without that option."""
    if not images_dir:
        return None
    image = os.path.join(images_dir, case + "_0000" + file_ending)
    if not os.path.isfile(image):
        raise FileNotFoundError(f"case {case}: image {image} not found; --images must be nnU-Net's raw "
                                f"imagesTr/imagesTs folder (channel 0000)")
    return image


def _instance_files(case: str, options: EvaluationOptions, file_ending: str) -> dict[str, str]:
    """The case's instance-map files (keyword arguments of :func:`evaluate_case`) in the folders the options give;
    FileNotFoundError naming the case and the option when one is missing."""
    files = {}
    for key, folder, option in (("ref_instances_file", options.reference_instances, "--reference-instances"),
                                ("pred_instances_file", options.prediction_instances, "--prediction-instances")):
        if folder is not None:
            files[key] = os.path.join(folder, case + file_ending)
            if not os.path.isfile(files[key]):
                raise FileNotFoundError(f"case {case}: no instance map {files[key]} in {option} "
                                        f"{folder}; give one instance map per case, named as its label file")
    return files


def evaluate_folder(folder_ref: str, folder_pred: str, output_file: str | Path | None, reader_writer,
                    file_ending: str, labels_or_regions, ignore_label: int | None = None, num_processes: int = 1,
                    tolerance_mm: float = 1.0, connectivity: int = 26, chill: bool = False,
                    png_dir: str | None = None, images_dir: str | None = None,
                    options: EvaluationOptions | None = None, allowed_labels=None,
                    list_unpredicted: bool = True) -> dict:
    """Evaluate all cases in parallel (spawn pool, tqdm progress bar); write the summary if ``output_file``.

    ``options`` default to ``tolerance_mm`` and ``connectivity`` with everything else at its default;
    ``allowed_labels`` are the declared label values every file must keep to (None: not checked). With
    ``options.confidence`` each case's probabilities are read from ``folder_pred/<case>.npz``. With ``chill`` and
    ``list_unpredicted`` the reference cases without a prediction are listed under
    ``references_without_prediction``.
    """
    if options is None:
        options = EvaluationOptions(tolerance_mm=tolerance_mm, connectivity=connectivity)
    _check_instance_options(options, labels_or_regions)
    pairs = pair_cases(folder_ref, folder_pred, file_ending, chill)
    predicted = {os.path.basename(pred) for _, pred in pairs}
    left_out = sorted(f[:-len(file_ending)] for f in subfiles(folder_ref, suffix=file_ending, join=False)
                      if f not in predicted)
    jobs = []
    for ref_file, pred_file in pairs:
        case = os.path.basename(ref_file)[: -len(file_ending)]
        png = os.path.join(png_dir, case + ".png") if png_dir else None
        image = _image_file(case, images_dir, file_ending)
        probabilities = os.path.join(folder_pred, case + ".npz") if options.confidence else None
        if probabilities is not None and not os.path.isfile(probabilities):
            raise FileNotFoundError(f"case {case}: no probabilities {probabilities}; --confidence needs "
                                    f"nnUNetv2_predict ... --save_probabilities (or drop --confidence)")
        jobs.append((ref_file, pred_file, reader_writer, list(labels_or_regions), ignore_label,
                     options.tolerance_mm, options.connectivity, png, image,
                     dict(options=options, allowed_labels=allowed_labels, probabilities_file=probabilities,
                          **_instance_files(case, options, file_ending))))
    if png_dir:
        os.makedirs(png_dir, exist_ok=True)
    results = run_cases(_evaluate_case_star, jobs, (), num_processes, f"evaluating {len(jobs)} cases",
                        describe=lambda job: f"case {os.path.basename(job[0])[:-len(file_ending)]}",
                        outputs=lambda job: [job[7]] if job[7] else [])  # the case's picture
    summary = summarize(results, list(labels_or_regions), options=options)
    if left_out and list_unpredicted:
        summary["references_without_prediction"] = left_out
    if output_file is not None:
        Path(output_file).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output_file, json_keys(summary))
    return summary


def evaluate_folder_from_json(folder_ref: str, folder_pred: str, dataset_json: str | dict, plans: str | dict,
                              output_file: str | Path | None = None, **kwargs) -> dict:
    """As nnU-Net's ``compute_metrics_on_folder2``: everything from dataset.json and the plans.

    ``output_file`` defaults to ``folder_pred/summary_instances.json``.
    """
    for option, value in (("-djfile", dataset_json), ("-pfile", plans)):
        if not isinstance(value, dict) and not os.path.isfile(value):
            raise FileNotFoundError(f"{option} {value} does not exist; give the dataset's dataset.json and "
                                    f"plans.json (in nnUNet_preprocessed/DatasetXXX_Name or the model folder)")
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    dataset_json = load_json(dataset_json) if not isinstance(dataset_json, dict) else dataset_json
    file_ending = dataset_json["file_ending"]
    _existing_folder(folder_ref, "GT_FOLDER")
    examples = subfiles(folder_ref, suffix=file_ending, join=True)
    if not examples:
        raise FileNotFoundError(f"no reference files ending in {file_ending!r} (dataset.json file_ending) "
                                f"in {folder_ref}")
    rw = determine_reader_writer_from_dataset_json(dataset_json, examples[0])()
    labels = LabelLayout.of_dataset(dataset_json, plans)
    if output_file is None:
        output_file = os.path.join(folder_pred, "summary_instances.json")
    allowed = list(labels.all_labels) + ([labels.ignore_label] if labels.ignore_label is not None else [])
    kwargs.setdefault("allowed_labels", allowed)
    return evaluate_folder(folder_ref, folder_pred, output_file, rw, file_ending, list(labels.labels_or_regions),
                           labels.ignore_label, **kwargs)


def evaluate_folder_simple(folder_ref: str, folder_pred: str, labels, ignore_label: int | None = None,
                           output_file: str | Path | None = None, **kwargs) -> dict:
    """As nnU-Net's ``compute_metrics_on_folder_simple``: reader from the file ending, labels given (the files may
    hold these, the background and the ignore label)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    _existing_folder(folder_ref, "GT_FOLDER")
    examples = subfiles(folder_ref, join=True)
    if not examples:
        raise FileNotFoundError(f"no reference files in {folder_ref}")
    file_ending = ".nii.gz" if examples[0].endswith(".nii.gz") else os.path.splitext(examples[0])[-1]
    rw = determine_reader_writer_from_file_ending(file_ending, examples[0], allow_nonmatching_filename=True,
                                                  verbose=False)()
    if output_file is None:
        output_file = os.path.join(folder_pred, "summary_instances.json")
    kwargs.setdefault("allowed_labels", [0, *labels] + ([ignore_label] if ignore_label is not None else []))
    return evaluate_folder(folder_ref, folder_pred, output_file, rw, file_ending, list(labels), ignore_label,
                           **kwargs)


def evaluate_validation_folder(validation_folder: str | Path, gt_folder: str | Path, dataset_json: str | dict,
                               plans: str | dict, num_processes: int = 1, tolerance_mm: float = 1.0,
                               connectivity: int = 26) -> Path:
    """Write ``summary_instances.json`` next to nnU-Net's ``summary.json`` in a fold's validation folder.

    For the trainers' final validation: call after nnU-Net's ``perform_actual_validation`` with
    ``gt_folder`` = ``nnUNet_preprocessed/DatasetXXX/gt_segmentations``, the dataset.json and plans (paths or
    dicts). Only the cases nnU-Net predicted are evaluated (the fold's validation cases); the other folds' cases in
    ``gt_folder`` are not listed as unpredicted. Returns the file.
    """
    out = Path(validation_folder) / "summary_instances.json"
    evaluate_folder_from_json(str(gt_folder), str(validation_folder), dataset_json, plans, out,
                              num_processes=num_processes, tolerance_mm=tolerance_mm, connectivity=connectivity,
                              chill=True, list_unpredicted=False)
    return out
