"""Benchmarks (`feddel-sim bench`): timed runs that write figures, never assertions.

suite.py runs the issue's five in order: embedding.py (1), federated_kmeans.py (2),
center_scoring.py (3), endtoend.py (4), scale.py (5); records.py is the record format and the
Markdown table, synthetic.py the video-like embeddings they share, synthfed.py the real apps
driven over synthetic embeddings. decodememory.py, outside the suite, measures the peak memory
of decoding decompression bombs (run it as a script).
"""
