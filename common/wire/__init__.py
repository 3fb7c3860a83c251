"""What crosses the wire: one typed request and reply per phase, to and from Flower records."""
