"""Drafters: falcon (semi-autoregressive), model (small HF LM), ngram (prompt lookup)."""
