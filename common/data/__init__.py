"""Files to samples: decode images read-only, scan a center's folder, its local pool, manifests."""
