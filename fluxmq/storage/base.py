"""What every store has in common."""

from __future__ import annotations


class StorageError(Exception):
    """The store cannot be opened or used; the message names the path and the problem."""
