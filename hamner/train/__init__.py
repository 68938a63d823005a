"""Training: the loop and everything only training needs.

    trainer      Trainer: builds a run from its settings and drives the curriculum to the end
    step         one optimizer step (micro-batches, loss, backward, clipping, optimizer)
    settings     TrainSettings / RunSettings and the command-line flags built from them
    startup      checked model, tokenizer, data and run directory for a new or resumed run
    optim        AdamW and Muon parameter groups and learning-rate application
    state        the registry of stateful parts saved in a checkpoint and restored on resume
    metrics      loss, throughput and MFU bookkeeping between log lines
    evaluation   evaluations at intervals and at stage ends (validation, tasks, probes, samples)
    loggers      TensorBoard and Weights & Biases reporting
    run_record   what ran: settings, versions, git commit
    distributed  torchrun process groups
    signals      SIGTERM/SIGINT as a request to save and stop
    throughput   tokens/s and model FLOPs utilisation
    host_memory  allocator settings for the host
    curriculum/  the curriculum format (TOML) and the controller that walks it
"""
