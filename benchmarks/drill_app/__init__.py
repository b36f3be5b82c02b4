"""The drill's small Django project: a protected stack and the unprotected ones, side by side."""
