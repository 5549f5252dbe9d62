"""warden: fleets of real User Mode Linux guests, for server consolidation and honeypots."""

__version__ = "0.1.0"
