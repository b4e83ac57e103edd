"""ufm-torch: neural collapse in the unconstrained features model and in real networks (Lightning, Hydra)."""
