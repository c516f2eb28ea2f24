"""Training stage (host only, needs torch): offline backbones, PatchCore and run folders."""
