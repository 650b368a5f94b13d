"""Coordinator side: speculative loop, scheduling, config, launch and client."""
