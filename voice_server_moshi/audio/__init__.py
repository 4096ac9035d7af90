"""Telephony audio path: pure, I/O-free, testable with plain arrays."""
