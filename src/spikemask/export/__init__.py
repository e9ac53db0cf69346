"""Writers of a trained model's predictions in other tools' formats (NLB, ...).

Each format lives in its own module and is imported on use; nothing here imports an
optional package at import time.
"""

__all__: list[str] = []
