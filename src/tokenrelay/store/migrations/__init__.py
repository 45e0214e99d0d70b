"""Alembic migrations, shipped in the package and run by ``tokenrelay db upgrade``."""
