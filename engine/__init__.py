"""Stagecoach engine: the domain core and the services around it."""

__version__ = "0.1.0"
