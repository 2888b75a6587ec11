"""elastic: a hybrid-cloud elastic cluster manager."""

__version__ = "0.1.0"
