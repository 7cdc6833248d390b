"""The HTTP routes, one router per group: completions, chat, models, health and metrics."""
