"""The HTTP API: FastAPI app factory and routes."""

from engine.api.app import create_app

__all__ = ["create_app"]
