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

-- The console's audit trail (store/audit.py), shared by its replicas: who logged in, previewed, replayed,
-- purged, reprocessed, exported, downloaded, pruned; with the selection and the result. Never a token or a
-- body: facts are what the operator chose (ids, criteria, counts) and what the command said it did.
CREATE TABLE IF NOT EXISTS flowscribe.console_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    event text NOT NULL,     -- login, login refused, logout, preview, action, action finished, export, download
    action text,             -- replay | purge | reprocess | prune (previews and actions)
    username text,           -- NULL: not logged in (a refused login)
    role text,
    remote text,
    facts jsonb NOT NULL DEFAULT '{}'
);
-- The page pages newest first by id, filtered by time, user or event.
CREATE INDEX IF NOT EXISTS console_audit_at_idx ON flowscribe.console_audit (at);
CREATE INDEX IF NOT EXISTS console_audit_username_id_idx ON flowscribe.console_audit (username, id);
CREATE INDEX IF NOT EXISTS console_audit_event_id_idx ON flowscribe.console_audit (event, id);
