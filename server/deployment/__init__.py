"""A deployed coordinator: site settings, certificates, the SuperLink, submitted rounds."""
