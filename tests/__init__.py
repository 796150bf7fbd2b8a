"""The project's tests: unit/ (no sockets), integration/ (real local servers), e2e/ (built artifacts)."""
