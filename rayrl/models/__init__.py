"""Models and tokenizers: the built-in tiny pair (tiny.py), loading of real HF checkpoints (loading.py) and
the forward passes training needs (forward.py). Nothing is imported here: the coordinator imports the worker
classes (and so forward.py) without needing transformers, which costs seconds of start-up per process."""
