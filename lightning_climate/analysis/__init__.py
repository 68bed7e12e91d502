"""Offline analysis of trained models and of logged scores."""

__all__: list[str] = []
