"""``nnunet_blob trainers``: list our trainers and print the ``nnUNet_extTrainer`` export line."""
from __future__ import annotations

from nnunet_blob.registration import TRAINER_FOLDERS, export_line, is_registered

DESCRIPTION = (
    "List the nnU-Net trainers of nnunet_blob (use one with nnUNetv2_train DATASET CONFIG FOLD -tr NAME) and say "
    "whether nnU-Net finds them. nnU-Net looks for trainers outside its own package in the folders listed in "
    "nnUNet_extTrainer; after `pip install` a start-up hook lists ours (the trainers, their <trainer>_benchmark "
    "classes of nnunet_blob benchmark and the demo's <trainer>_demo classes) in every Python process. Where the "
    "hook cannot run (editable install, NNUNET_BLOB_NO_AUTOREGISTER=1), run: "
    "eval \"$(nnunet_blob trainers --export)\"")

#: the trainer to start with (BENCHMARKS.md: the only one measured over three seeds with five-fold ensembles)
RECOMMENDED = "nnUNetTrainerBlobDice"

#: the listing's order, the README's: the choices first, then the paper's baselines and ablations
LISTING_ORDER = (
    "nnUNetTrainerBlobDice",
    "nnUNetTrainerBlobTversky",
    "nnUNetTrainerCCDiceCE",
    "nnUNetTrainerBlobDice_instSampling",
    "nnUNetTrainerTopKDice",
    "nnUNetTrainerTopKDice_k30",
    "nnUNetTrainerTopKDice_k10",
    "nnUNetTrainerTversky",
    "nnUNetTrainerTversky_noCE",
    "nnUNetTrainerBlobDice_noCE",
    "nnUNetTrainerBlobTversky_noCE",
    "nnUNetTrainerBlobDice_a3b1",
    "nnUNetTrainerBlobDice_a1b1",
    "nnUNetTrainerBlobDice_a1b2",
    "nnUNetTrainerBlobDice_a0b1",
    "nnUNetTrainerBlobDice_noMasking",
    "nnUNetTrainerCCDiceCE_noGlobal",
    "nnUNetTrainerCCDiceCE_paper",
)


def summary(trainer: type) -> str:
    """The first paragraph of the trainer's docstring as one line: its description in the listing."""
    doc = (trainer.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(doc.split())


def listing() -> list[str]:
    """One line per trainer, in :data:`LISTING_ORDER`, the recommended one marked ``*``."""
    from nnunet_blob.trainers import variants

    missing = set(variants.__all__) ^ set(LISTING_ORDER)
    if missing:  # a trainer added or renamed without its place in the listing
        raise RuntimeError(f"nnunet_blob trainers: LISTING_ORDER and the trainers differ: {sorted(missing)}")
    return [f"{'*' if name == RECOMMENDED else ' '} {name:34s} {summary(getattr(variants, name))}"
            for name in LISTING_ORDER]


def run(args) -> int:
    if args.export:
        print(export_line())
        return 0
    registered = is_registered()
    print("nnunet_blob trainers (nnUNetv2_train DATASET CONFIG FOLD -tr NAME):")
    print("\n".join(listing()))
    print("* the recommended default; which to choose, and the evidence: README.md, \"Choosing a trainer\"")
    print(f"\nnnUNet_extTrainer lists {' and '.join(TRAINER_FOLDERS)}: {'yes' if registered else 'NO'}")
    if not registered:
        print("The start-up hook installed with the package did not run (editable install, or "
              "NNUNET_BLOB_NO_AUTOREGISTER set). Run:\n  eval \"$(nnunet_blob trainers --export)\"")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("trainers", help="list the trainers; --export prints the nnUNet_extTrainer line",
                                   description=DESCRIPTION)
    parser.add_argument("--export", action="store_true",
                        help="print `export nnUNet_extTrainer=...` (your folders first, then ours) for "
                             "eval \"$(nnunet_blob trainers --export)\" in your shell")
    parser.set_defaults(func=run)
