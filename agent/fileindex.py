"""What the agent knows of the SS-MIX2 tree between runs, so that a day's changes are found without
re-reading unchanged files."""
