"""Training of the demo models and the Falcon drafter: corpora, tokenizer, LM and CSGD training loops."""
