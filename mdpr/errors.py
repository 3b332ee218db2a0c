"""The one error type users see."""

from __future__ import annotations

from typing import Sequence


class MdprError(Exception):
    """A problem with the user's input or environment.

    The message is one sentence that says what is wrong, where, and how to fix it. Library code names
    its own arguments and config keys (``top_k``, ``model.pretrained``); ``keys`` lists the names a
    message uses when they are ordinary words ("size", "seed"), so that the CLI translates exactly those
    into its flags. The CLI prints the message in red and exits with status 2; every other exception is a bug.
    """

    def __init__(self, message: str, *, keys: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.keys = tuple(keys)
