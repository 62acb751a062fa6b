"""Examples of extending rayrl (importable as ``examples.*`` from the repository root, where run_main.sh runs)."""
