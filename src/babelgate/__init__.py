"""babelgate: find and repair the multilingual safety failure of chat language models."""

from babelgate._version import __version__

__all__ = ["__version__"]
