"""The curation round as the coordinator runs it: phases 0-4, aggregation, OptiDEL synthesis."""
