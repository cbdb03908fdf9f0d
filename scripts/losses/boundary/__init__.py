"""Boundary-level losses: distances between predicted and target boundaries."""

__all__: list[str] = []
