"""Studies that reproduce published comparisons on any Hamner checkpoint.

length_gen        chunk perplexity at 1x..20x a window W, per checkpoint, over a run, two runs compared
multiple_choice   HellaSwag-style multiple-choice accuracy from a local jsonl file
"""
