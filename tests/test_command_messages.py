"""What ``nnunet_blob evaluate`` and ``compare`` tell a user, through the real command on tiny folders: errors on
their own last line after a progress bar, geometry in a named axis order, and notes on what was left out,
undefined or not comparable."""
import io
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.stats import wilcoxon

from helpers import line_with
from nnunet_blob.cli import main
from nnunet_blob.evaluation.compare import smallest_wilcoxon_p

SPACING_XYZ = (1.0, 1.0, 2.0)  # as SimpleITK sets it; nnU-Net's arrays are (z, y, x): (2.0, 1.0, 1.0)


def write(path, array, spacing=SPACING_XYZ):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def blob_case(index: int, with_label_2: bool = True) -> np.ndarray:
    array = np.zeros((4, 8, 8), np.uint8)
    array[1:3, 1:4 + index % 2, 1:4] = 1
    if with_label_2:
        array[3, 5:7, 5:7] = 2
    return array


def folders(tmp_path, n_cases=4, label_2_in=None, ending=".nii.gz"):
    """gt/ and pred/ with ``n_cases`` cases; label 2 only in the cases of ``label_2_in`` (default: all); the
    predictions miss one voxel row of label 1 in odd cases."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for i in range(n_cases):
        ref = blob_case(i, label_2_in is None or i in label_2_in)
        write(gt / f"case_{i}.nii.gz", ref)
        prediction = ref.copy()
        prediction[1, 1, 1:4] = 0 if i % 2 else 1
        write(pred / f"case_{i}{ending}", prediction)
    return gt, pred


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


class TerminalStream(io.StringIO):
    """stderr as a terminal: tqdm draws its bar there."""

    def isatty(self):
        return True


def test_an_error_after_a_progress_bar_is_the_last_line(tmp_path, monkeypatch):
    gt, pred = folders(tmp_path, 3)
    write(pred / "case_2.nii.gz", np.full((4, 8, 8), 5))  # fails after two cases
    stream = TerminalStream()
    monkeypatch.setattr("sys.stderr", stream)
    assert main(["evaluate", str(gt), str(pred), "-l", "1", "2", "-o", str(tmp_path / "s.json")]) == 1
    text = stream.getvalue()
    assert "evaluating 3 cases" in text  # the bar was drawn
    last = text.rstrip("\n").split("\n")[-1]
    assert last.startswith("nnunet_blob evaluate: error: ") and "case_2.nii.gz: labels [5]" in last, repr(text)


def test_a_bar_left_open_by_a_generator_ends_before_the_error(monkeypatch):
    """A bar iterated through a generator that a variable holds closes only when the generator is finalized; the
    error's traceback keeps the variable, and so the bar, alive past the message, which the bar's redraw would
    then follow."""
    from tqdm import tqdm

    from nnunet_blob.cli_errors import reports

    stream = TerminalStream()
    monkeypatch.setattr("sys.stderr", stream)

    @reports(ValueError, command="demo")
    def command(args):
        cases = iter(tqdm(range(3), desc="cases", file=stream))
        for case in cases:
            if case == 1:
                raise ValueError(f"case {case} is broken")

    assert command(None) == 1
    assert stream.getvalue().rstrip("\n").split("\n")[-1] == "nnunet_blob demo: error: case 1 is broken"


def test_geometry_is_given_in_a_named_axis_order(tmp_path, capsys):
    gt, pred = folders(tmp_path, 2)
    write(pred / "case_0.nii.gz", blob_case(0), spacing=(1.0, 1.0, 3.0))
    code, _, err = run(capsys, "evaluate", gt, pred, "-l", 1, 2)
    assert code == 1
    # both spacings, in nnU-Net's order and in SimpleITK's, each order named
    line_with(err, "spacing", "(3.0, 1.0, 1.0)", "(2.0, 1.0, 1.0)", "(z, y, x)", "(1.0, 1.0, 3.0)", "(1.0, 1.0, 2.0)",
              "(x, y, z)")
    write(pred / "case_0.nii.gz", blob_case(0)[:, :, :7])
    code, _, err = run(capsys, "evaluate", gt, pred, "-l", 1, 2)
    assert code == 1
    line_with(err, "shape", gt / "case_0.nii.gz", "(4, 8, 7)", "(4, 8, 8)", "(z, y, x)", "(7, 8, 4)", "(8, 8, 4)",
              "(x, y, z)")


def test_evaluate_says_what_it_left_out_where_metrics_are_undefined_and_where_pictures_went(tmp_path, capsys):
    gt, pred = folders(tmp_path, 4, label_2_in={0, 1})
    (pred / "case_3.nii.gz").unlink()
    code, out, err = run(capsys, "evaluate", gt, pred, "-l", 1, 2, "--chill", "--png", tmp_path / "pictures")
    assert code == 0, err
    line_with(out, "note: 1 ", "--chill", "case_3")
    summary = json.loads((pred / "summary_instances.json").read_text())
    assert summary["references_without_prediction"] == ["case_3"]
    # label 2 in cases 0 and 1 only: case 2 has neither reference nor prediction of it
    assert np.isnan(summary["metric_per_case"][2]["metrics"]["2"]["Dice"])
    label_2 = out.split("label 2:")[1]
    line_with(label_2, "note: undefined", "DSC in 1, IS in 1, IP in 1, F1 in 1 of 3 cases")  # which, how often
    assert "undefined" not in out.split("label 2:")[0]  # label 1 is everywhere
    assert f"pictures: {tmp_path / 'pictures'}" in out and len(list((tmp_path / "pictures").glob("*.png"))) == 3


def test_evaluate_names_the_file_endings_of_both_folders(tmp_path, capsys):
    gt, pred = folders(tmp_path, 2, ending=".nii")
    code, _, err = run(capsys, "evaluate", gt, pred, "-l", 1, 2)
    assert code == 1
    line_with(err, pred, "'.nii.gz'", "['.nii']", gt, "['.nii.gz']")


def evaluate(capsys, gt, pred, out, *options):
    code, _, err = run(capsys, "evaluate", gt, pred, "-l", 1, 2, "-o", out, *options)
    assert code == 0, err
    return out


@pytest.fixture
def two_summaries(tmp_path, capsys):
    gt, pred = folders(tmp_path, 4)
    return (evaluate(capsys, gt, pred, tmp_path / "a.json"),
            evaluate(capsys, gt, gt, tmp_path / "b.json", "--matching", "one-to-one"))


def test_compare_names_what_differs_and_what_is_not_comparable(two_summaries, tmp_path, capsys):
    a, b = two_summaries
    code, out, err = run(capsys, "compare", a, b)
    assert code == 0, err
    line_with(out, "note: 4 cases", "Wilcoxon", "p < 0.05", "2/2^4 = 0.125")
    code, out, err = run(capsys, "compare", a, b, "--metrics", "PQ", "Dice")
    assert code == 0, err
    line_with(out, "note: ", a, "PQ", "nnunet_blob evaluate", "--matching one-to-one")
    code, _, err = run(capsys, "compare", a, b, "--metrics", "PQ")
    assert code == 1
    line_with(err, "PQ", "nnunet_blob evaluate", "--matching one-to-one")

    # nnU-Net's summary.json: Dice and IoU (and the counts) per case
    nnunet = json.loads(b.read_text())
    for case in nnunet["metric_per_case"]:
        case["metrics"] = {k: {m: v[m] for m in ("Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref")}
                           for k, v in case["metrics"].items()}
    (tmp_path / "summary.json").write_text(json.dumps({"metric_per_case": nnunet["metric_per_case"]}))
    code, out, err = run(capsys, "compare", a, tmp_path / "summary.json")
    assert code == 0, err
    line_with(out, "note: ", tmp_path / "summary.json", "SurfaceDice, IS, IP, F1", "not compared",
              "'nnunet_blob evaluate'")
    assert "note: ranked on Dice alone" in out and "label 1  IS\n" not in out

    one_label = json.loads(a.read_text())
    for case in one_label["metric_per_case"]:
        del case["metrics"]["2"]
    (tmp_path / "one.json").write_text(json.dumps(one_label))
    code, _, err = run(capsys, "compare", a, tmp_path / "one.json")
    assert code == 1
    line_with(err, tmp_path / "one.json", "['1']", a, "['1', '2']")

    (tmp_path / "table.csv").write_text("case,Dice\ncase_0,0.9\n")
    code, _, err = run(capsys, "compare", a, tmp_path / "table.csv")
    assert code == 1
    line_with(err, tmp_path / "table.csv", "not a JSON file", "evaluation summary")


@pytest.mark.parametrize("n", [4, 5, 6])
def test_the_smallest_wilcoxon_p_is_that_of_all_differences_of_one_sign(n):
    differences = np.arange(1, n + 1, dtype=float)  # no ties, no zeros: scipy's exact test
    assert smallest_wilcoxon_p(n) == pytest.approx(wilcoxon(differences).pvalue, rel=1e-12)
    assert smallest_wilcoxon_p(n) == 2.0 / 2 ** n
    assert (smallest_wilcoxon_p(n) < 0.05) == (n >= 6)
