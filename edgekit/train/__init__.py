"""Training stage (host only, needs torch): backbones, the train-by-name engine, input rules and run folders."""
