"""How a round is judged and shown: NormDEL and ground-truth measures, self-contained HTML."""
