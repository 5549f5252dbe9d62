"""The composition root: builds the daemon with its features in their order, and runs it with
its API (`warden daemon`, `warden up`). The only place that knows every feature."""
