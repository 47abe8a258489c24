-- State that replicas share: browser sessions logged out through flexgate (FlexMeasures
-- mode; a replica refuses them once it has read the row) and failed logins (so the
-- brute-force limits hold across replicas). In FlexMeasures mode these tables live in
-- flexgate's own state database (FLEXGATE_STATE_URL), never in FlexMeasures'.
CREATE TABLE flexgate_revoked_session (
    id BIGSERIAL PRIMARY KEY,
    key BYTEA NOT NULL UNIQUE,
    expires_at BIGINT NOT NULL
);
CREATE INDEX flexgate_revoked_session_expiry ON flexgate_revoked_session (expires_at);

-- One row per failed login and subject: SHA-256 of "email\0<email>" or "client\0<address>"
-- (no email or address is stored in the clear).
CREATE TABLE flexgate_login_failure (
    id BIGSERIAL PRIMARY KEY,
    subject BYTEA NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX flexgate_login_failure_subject ON flexgate_login_failure (subject, at);
