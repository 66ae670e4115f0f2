"""Description matching: scores for codes with no training example (codes of the whole code
system that the training data never used, or a new release's codes), from the similarity
between a note's passages and the codes' descriptions. See docs/unseen_codes.md."""
