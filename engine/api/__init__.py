"""The HTTP API: its routes, their dependencies (``deps``) and shared request helpers.

The application that mounts these routes beside the dashboard's pages is
:func:`stagecoach.engine.app.create_app`; nothing here imports it, so the arrows point one way.
"""
