"""Consent decision engine over consent records (pure: no I/O)."""
