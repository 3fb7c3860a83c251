"""What protects a center's statistics: pairwise-masked secure sums and small-cell rules."""
