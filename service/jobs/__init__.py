"""The job layer: the rules of a job's life (admission, lifecycle, waiting), running jobs on a model, the
housekeeping, limits and credits, pricing, webhooks. It names its stores and dispatcher only through
`ports.py`; it imports no web framework (a test keeps it so) and no torch."""
