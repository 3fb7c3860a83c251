"""Does curation pay? Control selections from truth, the fast exact FedSGD path, statistics."""
