"""feddel.client: a center's side. The Flower ClientApp, its phase handlers and state folder,
and the feddel-center command line (commands/)."""
