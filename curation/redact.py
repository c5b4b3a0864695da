"""Re-export: credential redaction and refusal live in ``storage.credentials`` (the storage layer)."""

from storage.credentials import MASK, SECRET_ENV, has_credentials, redact, refuse_credentials

__all__ = ["MASK", "SECRET_ENV", "has_credentials", "redact", "refuse_credentials"]
