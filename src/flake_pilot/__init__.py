"""flake-pilot: run applications from containers and microVMs as native commands."""

__version__ = "0.1.0"
