#!/usr/bin/env bash
# Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d).
# Feast's SQL registry gets its own database, owned by the Airflow user (tasks and `feast apply`
# write it); the retrieval service connects as feast_reader, which may only read it.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE DATABASE feast OWNER "$POSTGRES_USER";
CREATE ROLE feast_reader LOGIN PASSWORD '$FEAST_READER_PASSWORD';
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname feast <<SQL
GRANT CONNECT ON DATABASE feast TO feast_reader;
GRANT USAGE ON SCHEMA public TO feast_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE "$POSTGRES_USER" IN SCHEMA public GRANT SELECT ON TABLES TO feast_reader;
SQL
