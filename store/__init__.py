"""PostgreSQL: the rows a callback becomes, the decision what to write, the batch write, migrations."""
