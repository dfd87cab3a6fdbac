"""CLI: python -m scripts.make_tiny_model OUT_DIR [--safety-checker none|pass|flag] (see weights/tiny.py)."""

from weights.tiny import build, main  # noqa: F401  (build: kept importable from here for old callers)

if __name__ == "__main__":
    raise SystemExit(main())
