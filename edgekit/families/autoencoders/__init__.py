"""The sae and dae families (autoencoders): their networks and training (train.py) and what their bundles hold (export.py)."""
