"""qwen-ds: memory estimates, plans, DeepSpeed configs and launches for Qwen-family models.

The Python API (qwen_ds/api.py) is importable from here without torch::

    from qwen_ds import estimate, plan
    estimate("Qwen3-8B", "H100-SXM", nodes=2, micro_batch=2).fits
"""

__version__ = "0.1.0"

# qwen_ds.validate is the config-checking package; its use case is qwen_ds.api.validate
__all__ = ["estimate", "generate", "plan", "__version__"]


def __getattr__(name: str):
    # lazy: `import qwen_ds` (the CLI reads __version__) stays free of the estimator and planner
    if name in ("estimate", "generate", "plan"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'qwen_ds' has no attribute {name!r}")
