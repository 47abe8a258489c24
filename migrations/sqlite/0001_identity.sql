-- Identity tables: accounts with account roles and an optional consultancy account,
-- users (exactly one account each) with user roles. Same shape as the PostgreSQL
-- migration of the same number; flexgate enables foreign keys on every connection.
CREATE TABLE flexgate_account (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE CHECK (length(name) > 0),
    consultancy_account_id INTEGER NULL REFERENCES flexgate_account (id) ON DELETE SET NULL,
    CONSTRAINT flexgate_account_not_own_consultancy CHECK (consultancy_account_id IS NULL OR consultancy_account_id <> id)
);

CREATE TABLE flexgate_account_role (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE CHECK (length(name) > 0)
);

CREATE TABLE flexgate_account_roles (
    account_id INTEGER NOT NULL REFERENCES flexgate_account (id) ON DELETE CASCADE,
    role_id INTEGER NOT NULL REFERENCES flexgate_account_role (id) ON DELETE CASCADE,
    PRIMARY KEY (account_id, role_id)
);

CREATE TABLE flexgate_user (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL UNIQUE CHECK (length(email) > 0),
    password_hash TEXT NOT NULL,
    active BOOLEAN NOT NULL DEFAULT 1,
    uniquifier TEXT NOT NULL UNIQUE,
    account_id INTEGER NOT NULL REFERENCES flexgate_account (id)
);
CREATE INDEX flexgate_user_account ON flexgate_user (account_id);

CREATE TABLE flexgate_role (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE CHECK (length(name) > 0)
);

CREATE TABLE flexgate_user_roles (
    user_id INTEGER NOT NULL REFERENCES flexgate_user (id) ON DELETE CASCADE,
    role_id INTEGER NOT NULL REFERENCES flexgate_role (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, role_id)
);

-- Change feed polled by every serving process (see the PostgreSQL migration).
CREATE TABLE flexgate_change (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NULL,
    account_id INTEGER NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
