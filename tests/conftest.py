"""Fixtures shared by the unit and integration tests: the throwaway PKI of the TLS tests."""

pytest_plugins = ["tests.tls_certs"]
