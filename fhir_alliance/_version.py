"""The package version, in one place (read by hatchling and by the client's User-Agent)."""

__version__ = "0.1.0.dev0"
