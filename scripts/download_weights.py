"""CLI: python -m scripts.download_weights MODEL_DIR (see weights/download.py)."""

from weights.download import REPO_ID, download, hub_problem, main, select_files  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
