-- Run once as a superuser. The owner runs migrations; the app role is what the service uses.
CREATE ROLE enclave_owner LOGIN;
CREATE ROLE enclave_app LOGIN;
CREATE DATABASE enclave OWNER enclave_owner;
-- after `enclave` has migrated once (ENCLAVE_AUDIT_APP_ROLE=enclave_app), enclave_app holds
-- SELECT, INSERT on audit_records and nothing more; the catalog tables it may read and write:
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO enclave_app;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_records FROM enclave_app;
