"""Many parts × models × targets: a plan (plan.py), its cells run on a local process pool or Ray
(engines.py, cell.py), resumed cell by cell (run.py), and one merged report (report.py)."""
