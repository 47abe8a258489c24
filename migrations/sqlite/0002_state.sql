-- State that replicas share (see the PostgreSQL migration of the same number); with
-- SQLite there is one process, and these tables keep it across restarts.
CREATE TABLE flexgate_revoked_session (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key BLOB NOT NULL UNIQUE,
    expires_at INTEGER NOT NULL
);
CREATE INDEX flexgate_revoked_session_expiry ON flexgate_revoked_session (expires_at);

CREATE TABLE flexgate_login_failure (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject BLOB NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX flexgate_login_failure_subject ON flexgate_login_failure (subject, at);
