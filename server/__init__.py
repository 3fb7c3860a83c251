"""feddel.server: the coordinator. The Flower ServerApp, the phases it runs (curation/,
training/), its reports, and the feddel-coordinator command line and deployment (deployment/)."""
