"""The README's commands exist: every ``nnunet_blob <command>`` and each option it is shown with is in the argparse
parser (``nnunet_blob.cli.build_parser()``), every option of nnU-Net's commands or of ``benchmarks/*.py`` is in
their source, and every ``nnUNetTrainer...`` name is a trainer of ours, of nnU-Net, or defined in the README.

Only code is checked (fenced blocks and inline code spans): prose may name things loosely, code is what users paste.
"""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

FLAG = re.compile(r"(?<![\w\-/.$])(--?[A-Za-z][\w\-]*)")
COMMAND = re.compile(r"\bnnunet_blob ([a-z][\w\-]*)")
TRAINER = re.compile(r"\bnnUNetTrainer\w*")
#: code spans that begin like an option but are arithmetic (``-log`` of CC-DiceCE's formula, nnU-Net's ``-Dice``)
NOT_OPTIONS = {"-log", "-Dice"}


@cache
def subcommand_options() -> dict[str, set[str]]:
    """Each sub-command of ``nnunet_blob`` and its option strings, from the real parser."""
    from nnunet_blob.cli import build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return {name: set(sub._option_string_actions) for name, sub in subparsers.choices.items()}


@cache
def nnunet_source() -> str:
    """The text of the installed nnU-Net's modules: its commands' options are quoted strings there."""
    import nnunetv2

    return "\n".join(p.read_text(errors="replace") for p in Path(nnunetv2.__file__).parent.rglob("*.py"))


@cache
def nnunet_trainer_classes() -> set[str]:
    return set(re.findall(r"^class (nnUNetTrainer\w*)\(", nnunet_source(), flags=re.M))


@cache
def benchmark_source() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "benchmarks").glob("*.py")))


def quoted_in(option: str, text: str) -> bool:
    return f'"{option}"' in text or f"'{option}'" in text


def code_segments(markdown: str) -> list[str]:
    """Fenced blocks as logical lines (continuations joined, ``#`` comments and prompts dropped), then inline spans."""
    segments = []
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*", "", line)
            segments += [part for part in re.split(r"&&|;|\|(?=\s)", line) if part.strip()]
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.M | re.S)
    segments += [span.replace("\\|", "|") for span in re.findall(r"`([^`\n]+)`", prose)]
    return segments


def problems(markdown: str) -> list[str]:
    """What in the README's code does not exist: unknown commands, options or trainers, each with its context."""
    commands = subcommand_options()
    ours = set().union(*commands.values())
    found = []
    for segment in code_segments(markdown):
        # the part of the segment that belongs to each tool named in it
        parts = re.split(r"(?=\bnnunet_blob [a-z]|\bnnUNetv2_\w+|\bbenchmarks/\w+\.py|\bpython )", segment)
        for part in parts:
            flags = [f for f in FLAG.findall(part) if f not in NOT_OPTIONS]
            command = COMMAND.match(part)
            first = part.split(maxsplit=1)[0] if part.split() else ""
            if command or (first in commands and flags and part.startswith(first)):
                name = command.group(1) if command else first
                if name not in commands:
                    found.append(f"unknown command `nnunet_blob {name}` in `{segment.strip()}`")
                    continue
                found += [f"`nnunet_blob {name}` has no option {f} (`{segment.strip()}`)"
                          for f in flags if f not in commands[name]]
            elif part.startswith("nnUNetv2_"):
                found += [f"nnU-Net's {first} has no option {f} (`{segment.strip()}`)"
                          for f in flags if not quoted_in(f, nnunet_source())]
            elif re.match(r"(python )?benchmarks/\w+\.py", part):
                found += [f"benchmarks/ has no option {f} (`{segment.strip()}`)"
                          for f in flags if not quoted_in(f, benchmark_source())]
            elif flags and FLAG.match(part.strip()):  # a span that names an option on its own
                f = flags[0]
                if f not in ours and not quoted_in(f, nnunet_source()) and not quoted_in(f, benchmark_source()):
                    found.append(f"no command has the option {f} (`{segment.strip()}`)")
    found += [f"unknown trainer {name}" for name in sorted(set(TRAINER.findall(markdown))) if not is_trainer(name,
                                                                                                           markdown)]
    return found


def is_trainer(name: str, markdown: str) -> bool:
    from nnunet_blob.trainers import variants

    ours = {"nnUNetTrainer", *variants.__all__}
    defined_in_readme = set(re.findall(r"^class (\w+)\(", markdown, flags=re.M))
    base = re.sub(r"_(demo|benchmark_noDataLoading|benchmark)$", "", name.split("__")[0])  # results folder: T__P__C
    return base in ours or name in defined_in_readme or name in nnunet_trainer_classes()


def test_every_command_option_and_trainer_in_the_readme_exists():
    assert problems(README.read_text()) == []


def test_the_readme_has_the_commands_this_check_reads():
    segments = code_segments(README.read_text())
    named = {m.group(1) for s in segments for m in COMMAND.finditer(s)}
    assert {"demo", "preprocess", "evaluate", "trainers", "tune-postprocessing", "benchmark"} <= named
    assert any("-num_gpus" in s for s in segments) and any("--npz" in s for s in segments)


@pytest.mark.parametrize("right, wrong", [
    ("--reference-instances", "--reference-instance"),  # an option of nnunet_blob evaluate
    ("tune-postprocessing", "tune-postprocesing"),  # a command
    ("-num_gpus", "-num_gpu"),  # an option of nnUNetv2_train
    ("--cut-touching", "--cut-touchin"),  # an option of benchmarks/bench_real.py
    ("nnUNetTrainerBlobTversky", "nnUNetTrainerBlobTverski"),  # a trainer
])
def test_a_misspelt_command_option_or_trainer_is_reported(right, wrong):
    text = README.read_text()
    whole = re.escape(right) + r"(?![\w\-])"
    assert re.search(whole, text)
    found = problems(re.sub(whole, wrong, text))
    assert any(re.search(re.escape(wrong) + r"(?![\w\-])", p) for p in found), found


def test_the_readme_trainer_table_follows_the_listing_order():
    from nnunet_blob.trainers.cli import LISTING_ORDER

    text = README.read_text()
    section = text[text.index("\n## Trainers\n"):]
    section = section[:section.index("\n## ", 1)]
    names: list[str] = []
    for row in re.findall(r"^\| (`nnUNetTrainer[^|]*)\|", section, flags=re.M):
        for name in re.findall(r"`(\w+)`", row):
            if name.startswith("_"):  # `nnUNetTrainerTopKDice`, `_k30`: a suffix of the row's first name
                name = names[-1].split("_")[0] + name
            names.append(name)
    assert names == list(LISTING_ORDER)
