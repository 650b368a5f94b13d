"""What runs next to a model: target verifier, drafters, draft trees, acceptance math, caches."""
