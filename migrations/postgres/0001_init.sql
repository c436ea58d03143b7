-- Users and their dates of birth. The username is the key (case-sensitive,
-- letters only: checked by the service; the CHECK keeps other writers honest).
CREATE TABLE IF NOT EXISTS users (
    username      TEXT PRIMARY KEY CHECK (username ~ '^[A-Za-z]{1,64}$'),
    date_of_birth DATE NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
