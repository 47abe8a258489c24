-- A revocation can be lifted (see the PostgreSQL migration of the same number).
ALTER TABLE flexgate_revoked_session ADD COLUMN lifted BOOLEAN NOT NULL DEFAULT FALSE;
