"""Command-line tools (plotting schedules, ...)."""
