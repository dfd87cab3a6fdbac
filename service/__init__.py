"""The web tier: FastAPI app, auth, input fetching, job records, dispatch, result storage. No torch."""
