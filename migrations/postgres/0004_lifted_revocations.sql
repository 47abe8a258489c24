-- A revocation can be lifted. Flask-Login's remember cookie carries no issue time: a
-- user's is the same value on every device and at every login, so the revocation a
-- logout records for it would otherwise also refuse the cookie FlexMeasures issues at
-- the user's next "remember me" login. When that cookie passes through, the row is
-- replaced by a lifted one, which tells every replica to forget the revocation and is
-- pruned like the others once every replica has had time to read it.
ALTER TABLE flexgate_revoked_session ADD COLUMN lifted BOOLEAN NOT NULL DEFAULT FALSE;
-- When the logout or the login happened (Unix milliseconds): an older event never
-- replaces a newer one's row, whichever replica writes last.
ALTER TABLE flexgate_revoked_session ADD COLUMN changed_at BIGINT NOT NULL DEFAULT 0;
