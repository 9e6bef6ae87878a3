"""Encoders MMAudio trains with: mel, audio VAE, vocoders, Synchformer, CLIP."""
