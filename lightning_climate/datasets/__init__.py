"""Readers of real on-disk formats and generators of embedded data."""

__all__: list[str] = []
