"""Orchestration modes. ``full-duplex`` drives a turn-based host from continuous streams."""
