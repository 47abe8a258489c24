-- Identity tables: accounts with account roles and an optional consultancy account,
-- users (exactly one account each) with user roles. Names carry a flexgate_ prefix so
-- they can live beside an upstream's own tables (FlexMeasures has account, fm_user, ...).
CREATE TABLE flexgate_account (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (length(name) > 0),
    consultancy_account_id BIGINT NULL REFERENCES flexgate_account (id) ON DELETE SET NULL,
    CONSTRAINT flexgate_account_not_own_consultancy CHECK (consultancy_account_id IS NULL OR consultancy_account_id <> id)
);

CREATE TABLE flexgate_account_role (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (length(name) > 0)
);

CREATE TABLE flexgate_account_roles (
    account_id BIGINT NOT NULL REFERENCES flexgate_account (id) ON DELETE CASCADE,
    role_id BIGINT NOT NULL REFERENCES flexgate_account_role (id) ON DELETE CASCADE,
    PRIMARY KEY (account_id, role_id)
);

CREATE TABLE flexgate_user (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE CHECK (length(email) > 0),
    password_hash TEXT NOT NULL,
    active BOOLEAN NOT NULL DEFAULT TRUE,
    uniquifier TEXT NOT NULL UNIQUE,
    account_id BIGINT NOT NULL REFERENCES flexgate_account (id)
);
CREATE INDEX flexgate_user_account ON flexgate_user (account_id);

CREATE TABLE flexgate_role (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (length(name) > 0)
);

CREATE TABLE flexgate_user_roles (
    user_id BIGINT NOT NULL REFERENCES flexgate_user (id) ON DELETE CASCADE,
    role_id BIGINT NOT NULL REFERENCES flexgate_role (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, role_id)
);

-- Change feed: every identity change that must reach the caches of every replica
-- (role edits, consultancy changes, password changes, deactivation, token revocation)
-- appends a row in the same transaction; replicas poll for ids above the last seen.
CREATE TABLE flexgate_change (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NULL,
    account_id BIGINT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
