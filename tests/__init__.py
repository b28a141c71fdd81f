"""Tests; see conftest.py for the shared embedded PostgreSQL fixture."""
