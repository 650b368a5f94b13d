"""Tandem's wire contract: message types, codec and transport (no torch, no models)."""
