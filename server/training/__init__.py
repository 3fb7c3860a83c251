"""Phases 5-6: federated MAE pre-training (FedAvg, FedAdam/FedSGD) and downstream scoring."""
