-- Run once as a superuser. The owner runs migrations; the app role is what the query service uses.
CREATE ROLE enclave_owner LOGIN;
CREATE ROLE enclave_app LOGIN;
CREATE DATABASE enclave OWNER enclave_owner;
-- Then, connected as enclave_owner (ENCLAVE_DATABASE_URL names it), on every install and upgrade:
--     enclave db upgrade --app-role enclave_app
-- It migrates the catalog and the audit log and leaves enclave_app with exactly what the query
-- side needs: SELECT on the catalog tables, SELECT and INSERT on audit_records (UPDATE, DELETE and
-- TRUNCATE revoked, and refused by triggers even for the owner), SELECT on the two version tables.
-- The service connects as enclave_app and never migrates; it refuses to start on an older schema.
-- Ingestion writes the catalog and runs as enclave_owner.
