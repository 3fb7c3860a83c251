"""feddel.common: the pure library both sides share.

No Flower outside wire/, no imports of feddel.client, feddel.server or feddel.simulations.
Sub-packages by concern: data/ (files to samples), models/ (torch: encoders, MAE, segmentation),
curation/ (numpy: quality, k-means, V-information, selection), privacy/ (what protects a
center's statistics), wire/ (the typed messages), reports/ (HTML and measures), deployment/
(certificates and site files). Top-level modules: config, errors, io, cliutil.
"""
