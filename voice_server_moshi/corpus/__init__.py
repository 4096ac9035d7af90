"""Synthetic telephone-call corpus with ground-truth labels (espeak-ng + sox, then numpy)."""
