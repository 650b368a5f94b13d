"""Training of the demo models and the Falcon drafter: corpora (text and chat), tokenizer, LM and CSGD
training loops, devices and mixed precision."""
