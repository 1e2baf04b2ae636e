-- The console's sessions, shared by its replicas and kept across restarts (store/sessions.py).
-- A row is keyed by HMAC-SHA256(FLOWSCRIBE_CONSOLE_SESSION_SECRET, the cookie's session id): the table never
-- holds a usable cookie, and a new secret matches no row (everyone is logged out). Logout deletes the row,
-- so it ends the session on every replica at once. New table only: old processes never read it.
CREATE TABLE IF NOT EXISTS flowscribe.console_sessions (
    key bytea PRIMARY KEY,
    data jsonb NOT NULL,  -- user, role, CSRF token, a digest of the login's token: never the token itself
    created timestamptz NOT NULL DEFAULT now(),
    seen timestamptz NOT NULL DEFAULT now()
);
-- Expired sessions are deleted by age of last use.
CREATE INDEX IF NOT EXISTS console_sessions_seen_idx ON flowscribe.console_sessions (seen);
