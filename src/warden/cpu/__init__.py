"""CPU placement (issue 19): every guest on one CPU of its own choosing, spread by load."""
