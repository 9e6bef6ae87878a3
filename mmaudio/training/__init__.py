"""Training of the flow network: batched memmap loading, lr schedule, post-hoc EMA, checkpoints and
the DDP training loop (``mmaudio.training.train.train``)."""
