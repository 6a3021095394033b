"""``nnunet_blob trainers``: list our trainers and print the ``nnUNet_extTrainer`` export line."""
from __future__ import annotations

from nnunet_blob.io import TRAINER_FOLDER, export_line, is_registered


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
    print(f"\nnnUNet_extTrainer lists {TRAINER_FOLDER}: {'yes' if registered else 'NO'}")
    if not registered:
        print("The start-up hook installed with the package did not run (editable install, or "
              "NNUNET_BLOB_NO_AUTOREGISTER set). Run:\n  eval \"$(nnunet_blob trainers --export)\"")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("trainers", help="list the trainers; --export prints the nnUNet_extTrainer line")
    parser.add_argument("--export", action="store_true", help="print `export nnUNet_extTrainer=...` for your shell")
    parser.set_defaults(func=run)
