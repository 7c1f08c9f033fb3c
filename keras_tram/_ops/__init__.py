"""Backend operations, private: what differs per backend (gradients, replica
sums, fused PyTorch arithmetic, control flow, random numbers)."""
