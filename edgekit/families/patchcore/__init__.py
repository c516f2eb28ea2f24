"""The patchcore family: its network and training (train.py) and what its bundle holds (export.py)."""
