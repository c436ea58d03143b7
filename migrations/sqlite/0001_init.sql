-- Users and their dates of birth. The username is the key (case-sensitive,
-- letters only: checked by the service). Dates are ISO 'YYYY-MM-DD' text, which
-- sorts and compares correctly; timestamps are RFC 3339 UTC.
CREATE TABLE IF NOT EXISTS users (
    username      TEXT PRIMARY KEY NOT NULL,
    date_of_birth TEXT NOT NULL CHECK (length(date_of_birth) = 10),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
) WITHOUT ROWID;
