"""Re-export: ``InputError`` lives in ``storage.errors`` (the storage layer raises it too)."""

from storage.errors import InputError

__all__ = ["InputError"]
