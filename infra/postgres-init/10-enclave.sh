#!/bin/sh
# First start of the compose PostgreSQL: the catalog owner, the service's audit role and Dagster's
# own role and database. Passwords come from the env file; psql quotes them (:'var').
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v owner_pw="$ENCLAVE_OWNER_PASSWORD" -v app_pw="$ENCLAVE_APP_PASSWORD" -v dagster_pw="$DAGSTER_PG_PASSWORD" <<'SQL'
CREATE ROLE enclave_owner LOGIN PASSWORD :'owner_pw';
CREATE ROLE enclave_app LOGIN PASSWORD :'app_pw';
CREATE ROLE dagster LOGIN PASSWORD :'dagster_pw';
CREATE DATABASE enclave OWNER enclave_owner;
CREATE DATABASE dagster OWNER dagster;
SQL
