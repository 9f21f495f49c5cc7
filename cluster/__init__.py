"""hone's front door: the CLI, the Ray connection and dispatch of a config to its mode."""
