"""The command line and what it writes: exactpost CLI, demo, restore, input files, pictures."""
