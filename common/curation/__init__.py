"""The curation math, numpy only: quality flags, k-means, V-information, selection, methods."""
