"""The meshgate sidecar, by role; the process wiring (app, workers, cli) on top."""
