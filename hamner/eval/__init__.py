"""Evaluating a trained model; `hamner eval` / `python -m hamner.eval` writes the whole report.

    loss     validation loss, perplexity and bits per byte on a token stream or shard directory
    tasks    exact-match accuracy on held-out synthetic-task samples (also scored during training)
    needle   recall of one fact planted in a long haystack
    length   loss at positions past the trained context (length generalisation)
    probe    exact-match accuracy on prompt/answer pairs (trained and held-out items apart)
    multiple_choice  HellaSwag-format multiple choice, scored as llm.c scores it
    length_study     chunk perplexity at 1x..20x a window, over a run's checkpoints
    report   every section above for one model, and its plain-text tables

The command (`hamner.commands.eval`) loads a model, writes eval.json and prints the tables.

Modules load only when imported, so the training loop can use one section without the others.
"""
