"""Model families: one folder each; base.py describes a family and registry.py lists them by name."""
