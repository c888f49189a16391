"""Read commands: history (and, later, balances, diff, changes, gaps)."""
