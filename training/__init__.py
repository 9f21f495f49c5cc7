"""hone's foundation: config, data, models, the DeepSpeed training loop, checkpoints, export, eval."""
