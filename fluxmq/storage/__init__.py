"""Durable storage of broker state. `open_store(cfg)` gives the configured store, or None for
`storage.type: memory` (the live objects are the state, and nothing is written)."""

from __future__ import annotations

from fluxmq.storage.base import StorageError


def open_store(cfg):
    """The store of `cfg.storage`, opened (raises StorageError), or None for memory."""
    if cfg.storage.type == "memory":
        return None
    from fluxmq.storage.lmdb_store import LMDBStore

    store = LMDBStore(cfg.storage.path, cfg.storage.fsync, cfg.storage.fsync_interval)
    store.open()
    return store


__all__ = ["StorageError", "open_store"]
