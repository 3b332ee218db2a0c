"""The one error type users see."""

from __future__ import annotations


class MdprError(Exception):
    """A problem with the user's input or environment.

    The message is one sentence that says what is wrong, where, and how to fix it.
    The CLI prints it in red and exits with status 2; every other exception is a bug.
    """
