"""OptiDEL-style synthesis at a center: lesion-like patch proposals and 2x2 hard mosaics."""
