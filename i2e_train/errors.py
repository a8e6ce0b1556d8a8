"""User-facing errors: reported as one line, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (config value, file, checkpoint). The message is the whole report."""


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated or not one we can read."""
