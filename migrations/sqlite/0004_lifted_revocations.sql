-- A revocation can be lifted (see the PostgreSQL migration of the same number).
ALTER TABLE flexgate_revoked_session ADD COLUMN lifted BOOLEAN NOT NULL DEFAULT FALSE;
-- When the logout or the login happened (Unix milliseconds): an older event never
-- replaces a newer one's row, whichever replica writes last.
ALTER TABLE flexgate_revoked_session ADD COLUMN changed_at BIGINT NOT NULL DEFAULT 0;
