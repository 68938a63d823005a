"""A run on disk: its directory layout, checkpoints, crash-safe writes and plots of its curves.

    directory   RunDir: the run's files (config.json, metrics.csv, samples.jsonl, train.log ...)
    checkpoint  writing, finding and reading checkpoints (atomic, with a `latest` pointer)
    durable     write-temp, fsync, rename, fsync: the one way a run writes a file
    plot        a run's loss, LR, throughput and accuracy curves as PNG files
"""
