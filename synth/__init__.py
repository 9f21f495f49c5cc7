"""Synthesis: documents into data a model can learn facts from (questions with grounded answers,
restatements), checked, cached by content, and reported per document and chunk."""
