"""PostgreSQL: the embedded server, roles, migrations, the cooperative wait callback and data access."""
