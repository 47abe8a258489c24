-- Long-lived, named, revocable API keys for machines. A key is stored only as its keyed
-- hash; `hint` is its last four characters, to tell keys apart in listings. `user_id`
-- names the user the key acts for: flexgate_user.id in native mode, fm_user.id in
-- FlexMeasures mode (whose users live in FlexMeasures' database: no foreign key).
CREATE TABLE flexgate_api_key (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL,
    name TEXT NOT NULL CHECK (length(name) > 0),
    hash BLOB NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    read_only INTEGER NOT NULL DEFAULT 0,
    roles TEXT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NULL,
    last_used_at BIGINT NULL,
    revoked_at BIGINT NULL
);
CREATE UNIQUE INDEX flexgate_api_key_live_name ON flexgate_api_key (user_id, name) WHERE revoked_at IS NULL;
