"""Stores that the package's callbacks write and its analysis reads."""

from lightning_climate.io.record_store import RecordStore

__all__ = ["RecordStore"]
