"""Build stages: each turns its declared inputs (and its dependencies' outputs) into one file."""
