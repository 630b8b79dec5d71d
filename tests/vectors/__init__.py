"""Known-answer test data copied from public sources (see each module)."""
