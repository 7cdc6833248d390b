"""dgemma-lsp: a language server that serves inline completions and refactor code actions
from a diffusion language model (see design/product.md)."""

__version__ = "0.1.0"
