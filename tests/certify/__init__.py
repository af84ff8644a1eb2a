"""Certification tests."""
