"""Base models: where they come from, loading them, and the device they run on."""
