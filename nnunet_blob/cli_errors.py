"""A command's expected errors (a user's input or environment, not a bug) as one line on stderr: ``nnunet_blob
COMMAND: error: ...`` and exit code 1, after the progress bars it left open are closed."""
from __future__ import annotations

import functools
import sys
import traceback


def reports(*errors: type[BaseException], command: str):
    """Sub-command decorator: ``errors`` (a user's input or environment, not a bug) end the command with
    ``nnunet_blob COMMAND: error: ...`` on stderr and exit code 1 instead of a traceback; Ctrl-C ends it with
    ``nnunet_blob COMMAND: interrupted`` and exit code 130 (as a shell reports SIGINT)."""
    def decorate(func):
        @functools.wraps(func)
        def run(args):
            try:
                return func(args)
            except errors as e:
                end_progress_bars(e)
                print(f"nnunet_blob {command}: error: {e}", file=sys.stderr)
                return 1
            except KeyboardInterrupt as e:
                end_progress_bars(e)
                print(f"nnunet_blob {command}: interrupted", file=sys.stderr)
                return 130

        return run

    return decorate


def end_progress_bars(error: BaseException | None = None) -> None:
    """Close the progress bars a failing command left open, so that its error comes on its own, last line.

    A bar over a generator that stopped at an error closes only when the generator is finalized, and the error's
    traceback keeps it alive until after the message is printed (the bar would be redrawn below the error):
    clearing the traceback's frames finalizes those generators now; any tqdm bar still open is closed."""
    if error is not None and error.__traceback__ is not None:
        traceback.clear_frames(error.__traceback__)
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        for bar in list(getattr(tqdm.tqdm, "_instances", ())):
            bar.close()
