"""The OpenAI-compatible HTTP server: `create_app(model, ServerConfig(...))`, run by `dgemma serve`."""

from engine.server.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
