"""The dfm family: its network and PCA fit (train.py) and what its bundle holds (export.py)."""
