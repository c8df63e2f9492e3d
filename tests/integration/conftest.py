"""Integration tests share the fixtures of tests/conftest.py: `postgres_cluster` (one throwaway PostgreSQL
cluster per session) and `postgres_url` (a fresh database on it per test module), which e2e tests use too."""
