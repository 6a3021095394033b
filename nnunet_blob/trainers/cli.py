"""``nnunet_blob trainers``: list our trainers and print the ``nnUNet_extTrainer`` export line."""
from __future__ import annotations

from nnunet_blob.io import TRAINER_FOLDERS, export_line, is_registered

DESCRIPTION = (
    "List the nnU-Net trainers of nnunet_blob (use one with nnUNetv2_train DATASET CONFIG FOLD -tr NAME) and say "
    "whether nnU-Net finds them. nnU-Net looks for trainers outside its own package in the folders listed in "
    "nnUNet_extTrainer; after `pip install` a start-up hook lists ours (the trainers, their <trainer>_benchmark "
    "classes of nnunet_blob benchmark and the demo's <trainer>_demo classes) in every Python process. Where the "
    "hook cannot run (editable install, NNUNET_BLOB_NO_AUTOREGISTER=1), run: "
    "eval \"$(nnunet_blob trainers --export)\"")


def run(args) -> int:
    if args.export:
        print(export_line())
        return 0
    from nnunet_blob.trainers import variants

    registered = is_registered()
    print("nnunet_blob trainers (nnUNetv2_train DATASET CONFIG FOLD -tr NAME):")
    for name in variants.__all__:
        doc = (getattr(variants, name).__doc__ or "").strip().splitlines()
        print(f"  {name:34s} {doc[0] if doc else ''}")
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
