"""Model backends behind one interface (see base.py)."""

from dgemma_lsp.backends.base import Backend, BackendState, BackendUnavailable, create_backend

__all__ = ["Backend", "BackendState", "BackendUnavailable", "create_backend"]
