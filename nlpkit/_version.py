"""The package version, in a module that imports nothing: every layer may read it without importing the package
root (which re-exports the plugin API and would close an import cycle)."""

__version__ = "0.1.0"
