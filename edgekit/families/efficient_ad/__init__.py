"""The efficient_ad family (train.py, export.py) and the pdn-teacher trainer it distils from (pdn_teacher.py)."""
