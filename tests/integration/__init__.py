"""Integration tests: real FerretDB, MariaDB, moto and the Bytemark simulator over real connections."""
