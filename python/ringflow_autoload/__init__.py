"""torch's `torch.backends` entry point for ringflow.

torch calls `register()` at the end of `import torch`; whatever goes wrong
here must not break `import torch`, so every failure is swallowed (and
logged at debug level).  Set TORCH_DEVICE_BACKEND_AUTOLOAD=0 to skip it.
"""


def register() -> None:
    try:
        from ringflow import backend

        backend.register()
    except Exception as e:  # noqa: BLE001 - must never raise into torch's import
        import logging

        logging.getLogger("ringflow").debug("ringflow backend autoload skipped: %r", e)
