"""An older name of the weights download, kept for scripts that call it: use `python -m weights.download MODEL_DIR`."""

from weights.download import REPO_ID, download, hub_problem, main, select_files  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
