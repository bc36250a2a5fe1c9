"""Segments' services: the published versions (``catalog``), manual lists, membership
queries, and the backfill of a new version from stored history.

The decision itself is pure (``stagecoach.engine.domain.segments``); the rows it leaves
are written by ``stagecoach.engine.services.storage.segments``.
"""
