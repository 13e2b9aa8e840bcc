"""trainer: sparse dictionaries trained on streams from an actstore store (issue 5)."""
