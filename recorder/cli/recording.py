"""Write commands: migrate, poll, run, demo, simulate."""
