"""Evaluating a trained model; `hamner eval` / `python -m hamner.eval` writes the whole report.

    loss     validation loss, perplexity and bits per byte on a token stream or shard directory
    tasks    exact-match accuracy on held-out synthetic-task samples (also scored during training)
    needle   recall of one fact planted in a long haystack
    length   loss at positions past the trained context (length generalisation)
    report   every section above for one model, and its plain-text tables
    cli      the command: load a model, write eval.json, print the tables

Modules load only when imported, so the training loop can use one section without the others.
"""
