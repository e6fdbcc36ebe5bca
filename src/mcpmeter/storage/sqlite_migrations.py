"""Versioned schema of the SQLite store. Append only: never edit a released migration."""

from __future__ import annotations

from .base import Migration
from .rollup import outcome_backfill

MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "projects, keys and raw events",
        up="""
        CREATE TABLE projects (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            user_salt TEXT NOT NULL,
            created_at INTEGER NOT NULL
        );
        CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id),
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            scopes TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            last_used_at INTEGER,
            revoked_at INTEGER,
            expires_at INTEGER,
            UNIQUE (project_id, name)
        );
        CREATE TABLE events (
            project_id INTEGER NOT NULL,
            event_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            ts INTEGER NOT NULL,
            server TEXT NOT NULL,
            server_version TEXT,
            tool TEXT,
            category TEXT,
            duration_ms REAL,
            ok INTEGER,
            error_type TEXT,
            error_message TEXT,
            session_id TEXT,
            client_name TEXT,
            client_version TEXT,
            protocol_version TEXT,
            transport TEXT,
            user_hash TEXT,
            args_bytes INTEGER,
            result_bytes INTEGER,
            attributes TEXT,
            received_at INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX events_by_id ON events (project_id, event_id);
        CREATE INDEX events_by_time ON events (project_id, ts);
        """,
        down="""
        DROP TABLE events;
        DROP TABLE api_keys;
        DROP TABLE projects;
        """,
    ),
]

MIGRATIONS.append(
    Migration(
        2,
        "rollups kept current at ingest: hourly/daily cells, users, errors, sessions, tool catalog",
        up="""
        CREATE TABLE rollup_hour (
            project_id INTEGER NOT NULL, bucket INTEGER NOT NULL, kind TEXT NOT NULL,
            server TEXT NOT NULL, tool TEXT NOT NULL, client TEXT NOT NULL,
            calls INTEGER NOT NULL, errors INTEGER NOT NULL,
            dur_count INTEGER NOT NULL, dur_sum REAL NOT NULL, dur_min REAL, dur_max REAL, hist BLOB,
            PRIMARY KEY (project_id, bucket, kind, server, tool, client)
        ) WITHOUT ROWID;
        CREATE TABLE rollup_day (
            project_id INTEGER NOT NULL, bucket INTEGER NOT NULL, kind TEXT NOT NULL,
            server TEXT NOT NULL, tool TEXT NOT NULL, client TEXT NOT NULL,
            calls INTEGER NOT NULL, errors INTEGER NOT NULL,
            dur_count INTEGER NOT NULL, dur_sum REAL NOT NULL, dur_min REAL, dur_max REAL, hist BLOB,
            PRIMARY KEY (project_id, bucket, kind, server, tool, client)
        ) WITHOUT ROWID;
        CREATE TABLE user_day (
            project_id INTEGER NOT NULL, day INTEGER NOT NULL, server TEXT NOT NULL, tool TEXT NOT NULL,
            client TEXT NOT NULL, user_hash TEXT NOT NULL,
            PRIMARY KEY (project_id, day, server, tool, client, user_hash)
        ) WITHOUT ROWID;
        CREATE TABLE user_hour (
            project_id INTEGER NOT NULL, hour INTEGER NOT NULL, user_hash TEXT NOT NULL,
            PRIMARY KEY (project_id, hour, user_hash)
        ) WITHOUT ROWID;
        CREATE TABLE user_first (
            project_id INTEGER NOT NULL, server TEXT NOT NULL, user_hash TEXT NOT NULL, first_seen INTEGER NOT NULL,
            PRIMARY KEY (project_id, server, user_hash)
        ) WITHOUT ROWID;
        CREATE INDEX user_first_by_time ON user_first (project_id, first_seen);
        CREATE TABLE error_hour (
            project_id INTEGER NOT NULL, bucket INTEGER NOT NULL, server TEXT NOT NULL, tool TEXT NOT NULL,
            client TEXT NOT NULL, error_type TEXT NOT NULL, count INTEGER NOT NULL, last_ts INTEGER NOT NULL,
            PRIMARY KEY (project_id, bucket, server, tool, client, error_type)
        ) WITHOUT ROWID;
        CREATE TABLE sessions (
            project_id INTEGER NOT NULL, session_id TEXT NOT NULL, server TEXT NOT NULL,
            client TEXT, client_version TEXT, protocol_version TEXT, transport TEXT, user_hash TEXT,
            first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL, calls INTEGER NOT NULL, errors INTEGER NOT NULL,
            init_ts INTEGER, list_ts INTEGER, first_call_ts INTEGER,
            PRIMARY KEY (project_id, session_id)
        );
        CREATE INDEX sessions_by_time ON sessions (project_id, first_ts);
        CREATE TABLE session_tools (
            project_id INTEGER NOT NULL, session_id TEXT NOT NULL, tool TEXT NOT NULL,
            PRIMARY KEY (project_id, session_id, tool)
        ) WITHOUT ROWID;
        CREATE TABLE tool_catalog (
            project_id INTEGER NOT NULL, server TEXT NOT NULL, tool TEXT NOT NULL,
            first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
            PRIMARY KEY (project_id, server, tool)
        ) WITHOUT ROWID;
        CREATE INDEX events_errors ON events (project_id, ts) WHERE ok = 0;
        """,
        down="""
        DROP INDEX events_errors;
        DROP TABLE tool_catalog;
        DROP TABLE session_tools;
        DROP TABLE sessions;
        DROP TABLE error_hour;
        DROP TABLE user_first;
        DROP TABLE user_hour;
        DROP TABLE user_day;
        DROP TABLE rollup_day;
        DROP TABLE rollup_hour;
        """,
    )
)

MIGRATIONS.append(
    Migration(
        3,
        "custom measurements (raw + daily aggregates) and server lifecycle events",
        up="""
        CREATE TABLE measurements (
            project_id INTEGER NOT NULL, measurement_id TEXT NOT NULL, server TEXT NOT NULL, name TEXT NOT NULL,
            type TEXT NOT NULL, tags TEXT NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL
        );
        CREATE UNIQUE INDEX measurements_by_id ON measurements (project_id, measurement_id);
        CREATE INDEX measurements_by_time ON measurements (project_id, ts);
        CREATE TABLE measurement_day (
            project_id INTEGER NOT NULL, day INTEGER NOT NULL, server TEXT NOT NULL, name TEXT NOT NULL,
            type TEXT NOT NULL, tags TEXT NOT NULL, count INTEGER NOT NULL, sum REAL NOT NULL,
            min REAL NOT NULL, max REAL NOT NULL, last_ts INTEGER NOT NULL, last_value REAL NOT NULL,
            PRIMARY KEY (project_id, name, day, server, type, tags)
        ) WITHOUT ROWID;
        CREATE TABLE server_events (
            project_id INTEGER NOT NULL, event_id TEXT NOT NULL, server TEXT NOT NULL, type TEXT NOT NULL,
            ts INTEGER NOT NULL, version TEXT, message TEXT, attributes TEXT,
            PRIMARY KEY (project_id, event_id)
        );
        CREATE INDEX server_events_by_time ON server_events (project_id, ts);
        """,
        down="""
        DROP TABLE server_events;
        DROP TABLE measurement_day;
        DROP TABLE measurements;
        """,
    )
)

MIGRATIONS.append(
    Migration(
        4,
        "tool catalog: when each tool was last called, apart from when it was last listed",
        up="""
        ALTER TABLE tool_catalog ADD COLUMN last_called INTEGER;
        UPDATE tool_catalog SET last_called = c.ts
        FROM (SELECT project_id, server, tool, max(ts) AS ts FROM events WHERE kind = 'tool_call' GROUP BY project_id, server, tool) AS c
        WHERE c.project_id = tool_catalog.project_id AND c.server = tool_catalog.server AND c.tool = tool_catalog.tool;
        """,
        down="""
        ALTER TABLE tool_catalog DROP COLUMN last_called;
        """,
    )
)

MIGRATIONS.append(
    Migration(
        5,
        "tool calls per day and tool over every client, with exact user sets (bitmaps over user numbers)",
        up="""
        CREATE TABLE user_number (
            project_id INTEGER NOT NULL, user_hash TEXT NOT NULL, number INTEGER NOT NULL, first_seen INTEGER NOT NULL,
            PRIMARY KEY (project_id, user_hash)
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX user_number_by_number ON user_number (project_id, number);
        CREATE INDEX user_number_by_first ON user_number (project_id, first_seen);
        INSERT INTO user_number (project_id, user_hash, number, first_seen)
        SELECT project_id, user_hash, row_number() OVER (PARTITION BY project_id ORDER BY min(first_seen), user_hash) - 1,
               min(first_seen)
        FROM user_first GROUP BY project_id, user_hash;
        CREATE TABLE rollup_tool_day (
            project_id INTEGER NOT NULL, bucket INTEGER NOT NULL, server TEXT NOT NULL, tool TEXT NOT NULL,
            calls INTEGER NOT NULL, errors INTEGER NOT NULL,
            dur_count INTEGER NOT NULL, dur_sum REAL NOT NULL, dur_min REAL, dur_max REAL, hist BLOB, users BLOB,
            PRIMARY KEY (project_id, bucket, server, tool)
        ) WITHOUT ROWID;
        INSERT INTO rollup_tool_day
        SELECT r.project_id, r.bucket, r.server, r.tool, sum(r.calls), sum(r.errors), sum(r.dur_count), sum(r.dur_sum),
               min(r.dur_min), max(r.dur_max), hist_sum(r.hist),
               (SELECT user_set(n.number) FROM user_day u
                JOIN user_number n ON n.project_id = u.project_id AND n.user_hash = u.user_hash
                WHERE u.project_id = r.project_id AND u.day = r.bucket AND u.server = r.server AND u.tool = r.tool)
        FROM rollup_day r WHERE r.kind = 'tool_call'
        GROUP BY r.project_id, r.bucket, r.server, r.tool;
        """,
        down="""
        DROP TABLE rollup_tool_day;
        DROP TABLE user_number;
        """,
    )
)

MIGRATIONS.append(
    Migration(
        6,
        "security: signing secrets, a keys version for immediate revocation, people's access, audit log",
        up="""
        ALTER TABLE api_keys ADD COLUMN signing_secret TEXT;
        CREATE TABLE security_state (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO security_state VALUES ('keys_version', 0);
        CREATE TRIGGER api_keys_changed AFTER UPDATE OF revoked_at, expires_at, scopes, key_hash, signing_secret, project_id
        ON api_keys BEGIN UPDATE security_state SET value = value + 1 WHERE name = 'keys_version'; END;
        CREATE TRIGGER api_keys_removed AFTER DELETE ON api_keys
        BEGIN UPDATE security_state SET value = value + 1 WHERE name = 'keys_version'; END;
        CREATE TABLE access_grants (
            project_id INTEGER NOT NULL REFERENCES projects(id), identity TEXT NOT NULL, role TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (project_id, identity)
        );
        CREATE INDEX access_grants_by_identity ON access_grants (identity);
        CREATE TRIGGER access_granted AFTER INSERT ON access_grants
        BEGIN UPDATE security_state SET value = value + 1 WHERE name = 'keys_version'; END;
        CREATE TRIGGER access_changed AFTER UPDATE ON access_grants
        BEGIN UPDATE security_state SET value = value + 1 WHERE name = 'keys_version'; END;
        CREATE TRIGGER access_revoked AFTER DELETE ON access_grants
        BEGIN UPDATE security_state SET value = value + 1 WHERE name = 'keys_version'; END;
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, project_id INTEGER, project TEXT, actor TEXT NOT NULL,
            action TEXT NOT NULL, target TEXT, detail TEXT, source TEXT NOT NULL
        );
        CREATE INDEX audit_log_by_project ON audit_log (project_id, ts);
        """,
        down="""
        DROP TRIGGER api_keys_changed;
        DROP TRIGGER api_keys_removed;
        DROP TABLE audit_log;
        DROP TABLE access_grants;
        DROP TABLE security_state;
        ALTER TABLE api_keys DROP COLUMN signing_secret;
        """,
    )
)

MIGRATIONS.append(
    Migration(
        7,
        "dashboard sessions shared by every collector process of the store, the collectors' own secrets, tokens used once",
        up="""
        CREATE TABLE dashboard_sessions (
            token_hash TEXT PRIMARY KEY, project_id INTEGER NOT NULL, owner TEXT NOT NULL, person TEXT,
            created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX dashboard_sessions_by_owner ON dashboard_sessions (owner, created_at);
        CREATE INDEX dashboard_sessions_by_project ON dashboard_sessions (project_id, created_at);
        CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions (expires_at);
        CREATE TABLE collector_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL, created_at INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE used_once (token_hash TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) WITHOUT ROWID;
        """,
        down="""
        DROP TABLE used_once;
        DROP TABLE collector_secrets;
        DROP TABLE dashboard_sessions;
        """,
    )
)

MIGRATIONS.append(
    Migration(
        8,
        "keys bound to servers; SQL views mcp_usage_hourly/daily and mcp_usage_summary() (PostgreSQL)",
        # The views and the function are PostgreSQL's (postgres_migrations.py): SQLite keeps
        # histograms as blobs SQL cannot read; its users ask `mcpmeter report` or the API.
        up="ALTER TABLE api_keys ADD COLUMN servers TEXT;",
        down="ALTER TABLE api_keys DROP COLUMN servers;",
    )
)


MIGRATIONS.append(
    Migration(
        9,
        "request counts of rate limits in fixed windows, shared by the collectors of a store",
        up="""
        CREATE TABLE rate_windows (
            name TEXT NOT NULL, window_start INTEGER NOT NULL, requests INTEGER NOT NULL,
            PRIMARY KEY (name, window_start)
        ) WITHOUT ROWID;
        """,
        down="""
        DROP TABLE rate_windows;
        """,
    )
)

# The outcome class of an error_hour row written before schema 10, from its name alone
# (``protocol.outcome_of`` without attributes; "error" is a failure without a type).
_OUTCOME_OF_NAME = """CASE
    WHEN error_type = 'cancelled' THEN 'cancelled'
    WHEN error_type IN ('parse_error', 'invalid_request', 'method_not_found', 'invalid_params', 'resource_not_found')
        THEN 'caller_error'
    WHEN error_type = 'tool_error' THEN 'tool_error'
    WHEN error_type IN ('error', 'internal_error', 'header_mismatch', 'missing_required_client_capability',
                        'unsupported_protocol_version', 'url_elicitation_required', 'jsonrpc_error')
        OR error_type GLOB '[0-9]*' OR error_type GLOB '-[0-9]*' THEN 'server_error'
    ELSE 'tool_error' END"""
_ERROR_HOUR_11 = """
CREATE TABLE error_hour_11 (
    project_id INTEGER NOT NULL, bucket INTEGER NOT NULL, server TEXT NOT NULL, tool TEXT NOT NULL,
    client TEXT NOT NULL, error_type TEXT NOT NULL, outcome TEXT NOT NULL, count INTEGER NOT NULL, last_ts INTEGER NOT NULL,
    PRIMARY KEY (project_id, bucket, server, tool, client, error_type, outcome)
) WITHOUT ROWID;
"""
# Other usage actions: kinds mcpmeter and the MCP protocol do not record themselves (rollup.is_action).
_ACTION_KINDS = """kind NOT IN ('tool_call', 'list_tools', 'initialize', 'server_discover', 'session_start', 'session_end',
    'tool_listed', 'sdk.dropped', 'auth', 'ping') AND instr(kind, '/') = 0"""

_OUTCOMES_FROM_EVENTS = outcome_backfill('json_extract(attributes, \'$."mcp.outcome"\')', "(error_type GLOB '[0-9]*' OR error_type GLOB '-[0-9]*')")

MIGRATIONS.append(
    Migration(
        10,
        "outcome classes in the rollups, categories and definition sizes in the catalog, hourly measurements, "
        "usage actions, the activation funnel",
        up=f"""
        ALTER TABLE rollup_hour ADD COLUMN caller_errors INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE rollup_hour ADD COLUMN server_errors INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE rollup_hour ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE rollup_day ADD COLUMN caller_errors INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE rollup_day ADD COLUMN server_errors INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE rollup_day ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE rollup_tool_day ADD COLUMN caller_errors INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE rollup_tool_day ADD COLUMN server_errors INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE rollup_tool_day ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0;
        {_ERROR_HOUR_11}
        INSERT INTO error_hour_11
        SELECT project_id, bucket, server, tool, client, error_type, {_OUTCOME_OF_NAME}, count, last_ts FROM error_hour;
        DROP TABLE error_hour;
        ALTER TABLE error_hour_11 RENAME TO error_hour;
        ALTER TABLE tool_catalog ADD COLUMN listed_first INTEGER;
        ALTER TABLE tool_catalog ADD COLUMN listed_last INTEGER;
        ALTER TABLE tool_catalog ADD COLUMN def_bytes INTEGER;
        ALTER TABLE tool_catalog ADD COLUMN category TEXT;
        ALTER TABLE tool_catalog ADD COLUMN category_ts INTEGER;
        UPDATE tool_catalog SET listed_first = l.first, listed_last = l.last,
            def_bytes = (SELECT max(e.result_bytes) FROM events e WHERE e.project_id = l.project_id AND e.kind = 'tool_listed'
                         AND e.server = l.server AND e.tool = l.tool AND e.ts = l.last)
        FROM (SELECT project_id, server, tool, min(ts) AS first, max(ts) AS last FROM events WHERE kind = 'tool_listed'
              GROUP BY project_id, server, tool) AS l
        WHERE l.project_id = tool_catalog.project_id AND l.server = tool_catalog.server AND l.tool = tool_catalog.tool;
        UPDATE tool_catalog SET category_ts = c.ts,
            category = (SELECT max(e.category) FROM events e WHERE e.project_id = c.project_id AND e.server = c.server
                        AND e.tool = c.tool AND e.ts = c.ts AND e.category IS NOT NULL)
        FROM (SELECT project_id, server, tool, max(ts) AS ts FROM events WHERE category IS NOT NULL AND tool IS NOT NULL
              GROUP BY project_id, server, tool) AS c
        WHERE c.project_id = tool_catalog.project_id AND c.server = tool_catalog.server AND c.tool = tool_catalog.tool;
        {_OUTCOMES_FROM_EVENTS}
        CREATE INDEX tool_catalog_by_category ON tool_catalog (project_id, category) WHERE category IS NOT NULL;
        CREATE TABLE measurement_hour (
            project_id INTEGER NOT NULL, hour INTEGER NOT NULL, server TEXT NOT NULL, name TEXT NOT NULL,
            type TEXT NOT NULL, tags TEXT NOT NULL, count INTEGER NOT NULL, sum REAL NOT NULL,
            min REAL NOT NULL, max REAL NOT NULL, last_ts INTEGER NOT NULL, last_value REAL NOT NULL,
            PRIMARY KEY (project_id, name, hour, server, type, tags)
        ) WITHOUT ROWID;
        INSERT INTO measurement_hour
        SELECT project_id, ts - ts % 3600000, server, name, type, tags, count(*), sum(value), min(value), max(value), max(ts),
               (SELECT m.value FROM measurements m WHERE m.project_id = g.project_id AND m.name = g.name AND m.server = g.server
                AND m.type = g.type AND m.tags = g.tags AND m.ts - m.ts % 3600000 = g.ts - g.ts % 3600000
                ORDER BY m.ts DESC, m.rowid DESC LIMIT 1)
        FROM measurements g GROUP BY project_id, ts - ts % 3600000, server, name, type, tags;
        CREATE TABLE action_user_day (
            project_id INTEGER NOT NULL, day INTEGER NOT NULL, server TEXT NOT NULL, kind TEXT NOT NULL, user_hash TEXT NOT NULL,
            PRIMARY KEY (project_id, day, server, kind, user_hash)
        ) WITHOUT ROWID;
        CREATE TABLE action_user_hour (
            project_id INTEGER NOT NULL, hour INTEGER NOT NULL, server TEXT NOT NULL, kind TEXT NOT NULL, user_hash TEXT NOT NULL,
            PRIMARY KEY (project_id, hour, server, kind, user_hash)
        ) WITHOUT ROWID;
        INSERT OR IGNORE INTO action_user_day SELECT DISTINCT project_id, ts - ts % 86400000, server, kind, user_hash FROM events
        WHERE user_hash IS NOT NULL AND {_ACTION_KINDS};
        INSERT OR IGNORE INTO action_user_hour SELECT DISTINCT project_id, ts - ts % 3600000, server, kind, user_hash FROM events
        WHERE user_hash IS NOT NULL AND {_ACTION_KINDS};
        CREATE TABLE activation (
            project_id INTEGER NOT NULL, server TEXT NOT NULL, subject TEXT NOT NULL, client TEXT,
            first_ts INTEGER NOT NULL, handshake_ts INTEGER, list_ts INTEGER, call_ts INTEGER,
            PRIMARY KEY (project_id, server, subject)
        ) WITHOUT ROWID;
        CREATE INDEX activation_by_time ON activation (project_id, first_ts);
        INSERT INTO activation
        SELECT project_id, server, CASE WHEN session_id <> '' THEN 's:' || session_id ELSE 'u:' || user_hash END, min(client_name),
               min(ts), min(CASE WHEN kind IN ('initialize', 'server_discover') THEN ts END),
               min(CASE WHEN kind = 'list_tools' THEN ts END), min(CASE WHEN kind = 'tool_call' THEN ts END)
        FROM events WHERE kind IN ('initialize', 'server_discover', 'list_tools', 'tool_call')
            AND (session_id <> '' OR user_hash IS NOT NULL)
        GROUP BY 1, 2, 3;
        """,
        down="""
        DROP TABLE activation;
        DROP TABLE action_user_hour;
        DROP TABLE action_user_day;
        DROP TABLE measurement_hour;
        DROP INDEX tool_catalog_by_category;
        ALTER TABLE tool_catalog DROP COLUMN category_ts;
        ALTER TABLE tool_catalog DROP COLUMN category;
        ALTER TABLE tool_catalog DROP COLUMN def_bytes;
        ALTER TABLE tool_catalog DROP COLUMN listed_last;
        ALTER TABLE tool_catalog DROP COLUMN listed_first;
        CREATE TABLE error_hour_2 (
            project_id INTEGER NOT NULL, bucket INTEGER NOT NULL, server TEXT NOT NULL, tool TEXT NOT NULL,
            client TEXT NOT NULL, error_type TEXT NOT NULL, count INTEGER NOT NULL, last_ts INTEGER NOT NULL,
            PRIMARY KEY (project_id, bucket, server, tool, client, error_type)
        ) WITHOUT ROWID;
        INSERT INTO error_hour_2 SELECT project_id, bucket, server, tool, client, error_type, sum(count), max(last_ts)
        FROM error_hour GROUP BY project_id, bucket, server, tool, client, error_type;
        DROP TABLE error_hour;
        ALTER TABLE error_hour_2 RENAME TO error_hour;
        ALTER TABLE rollup_tool_day DROP COLUMN cancelled;
        ALTER TABLE rollup_tool_day DROP COLUMN server_errors;
        ALTER TABLE rollup_tool_day DROP COLUMN caller_errors;
        ALTER TABLE rollup_day DROP COLUMN cancelled;
        ALTER TABLE rollup_day DROP COLUMN server_errors;
        ALTER TABLE rollup_day DROP COLUMN caller_errors;
        ALTER TABLE rollup_hour DROP COLUMN cancelled;
        ALTER TABLE rollup_hour DROP COLUMN server_errors;
        ALTER TABLE rollup_hour DROP COLUMN caller_errors;
        """,
    )
)

# Schema 11: what the 30- and 90-day views still read per session or per (user, day, tool,
# client) row, as daily cells. '' stands for a missing client, version or protocol, as in the
# other rollups. Filled from the sessions, activation and user_day rows already stored.
_DAY = "86400000"

MIGRATIONS.append(
    Migration(
        11,
        "daily rollups of sessions (per client, version and protocol; per tool), of the activation funnel, "
        "errors per day, and per-client daily user sets",
        up=f"""
        CREATE TABLE session_day (
            project_id INTEGER NOT NULL, day INTEGER NOT NULL, server TEXT NOT NULL, client TEXT NOT NULL,
            client_version TEXT NOT NULL, protocol_version TEXT NOT NULL, sessions INTEGER NOT NULL,
            PRIMARY KEY (project_id, day, server, client, client_version, protocol_version)
        ) WITHOUT ROWID;
        INSERT INTO session_day
        SELECT project_id, first_ts - first_ts % {_DAY}, server, coalesce(client, ''), coalesce(client_version, ''),
               coalesce(protocol_version, ''), count(*)
        FROM sessions GROUP BY 1, 2, 3, 4, 5, 6;
        CREATE TABLE session_tool_day (
            project_id INTEGER NOT NULL, day INTEGER NOT NULL, server TEXT NOT NULL, tool TEXT NOT NULL, client TEXT NOT NULL,
            client_version TEXT NOT NULL, protocol_version TEXT NOT NULL, sessions INTEGER NOT NULL,
            PRIMARY KEY (project_id, day, server, tool, client, client_version, protocol_version)
        ) WITHOUT ROWID;
        INSERT INTO session_tool_day
        SELECT s.project_id, s.first_ts - s.first_ts % {_DAY}, s.server, t.tool, coalesce(s.client, ''),
               coalesce(s.client_version, ''), coalesce(s.protocol_version, ''), count(*)
        FROM sessions s JOIN session_tools t ON t.project_id = s.project_id AND t.session_id = s.session_id
        GROUP BY 1, 2, 3, 4, 5, 6, 7;
        CREATE TABLE activation_day (
            project_id INTEGER NOT NULL, day INTEGER NOT NULL, server TEXT NOT NULL, client TEXT NOT NULL,
            followed INTEGER NOT NULL, sessions INTEGER NOT NULL, handshake INTEGER NOT NULL, listed INTEGER NOT NULL,
            called INTEGER NOT NULL, listed_only INTEGER NOT NULL,
            PRIMARY KEY (project_id, day, server, client)
        ) WITHOUT ROWID;
        INSERT INTO activation_day
        SELECT project_id, first_ts - first_ts % {_DAY}, server, coalesce(client, ''), count(*),
               sum(CASE WHEN subject LIKE 's:%' THEN 1 ELSE 0 END), count(handshake_ts), count(list_ts), count(call_ts),
               sum(CASE WHEN list_ts IS NOT NULL AND call_ts IS NULL THEN 1 ELSE 0 END)
        FROM activation GROUP BY 1, 2, 3, 4;
        CREATE TABLE error_day (
            project_id INTEGER NOT NULL, day INTEGER NOT NULL, server TEXT NOT NULL, tool TEXT NOT NULL,
            client TEXT NOT NULL, error_type TEXT NOT NULL, outcome TEXT NOT NULL, count INTEGER NOT NULL,
            last_ts INTEGER NOT NULL,
            PRIMARY KEY (project_id, day, server, tool, client, error_type, outcome)
        ) WITHOUT ROWID;
        INSERT INTO error_day
        SELECT project_id, bucket - bucket % {_DAY}, server, tool, client, error_type, outcome, sum(count), max(last_ts)
        FROM error_hour GROUP BY 1, 2, 3, 4, 5, 6, 7;
        CREATE TABLE user_client_day (
            project_id INTEGER NOT NULL, bucket INTEGER NOT NULL, server TEXT NOT NULL, client TEXT NOT NULL, users BLOB,
            PRIMARY KEY (project_id, bucket, server, client)
        ) WITHOUT ROWID;
        INSERT INTO user_client_day
        SELECT u.project_id, u.day, u.server, u.client, user_set(n.number)
        FROM (SELECT DISTINCT project_id, day, server, client, user_hash FROM user_day) AS u
        JOIN user_number n ON n.project_id = u.project_id AND n.user_hash = u.user_hash
        GROUP BY u.project_id, u.day, u.server, u.client;
        CREATE TABLE user_tool_client_day (
            project_id INTEGER NOT NULL, bucket INTEGER NOT NULL, server TEXT NOT NULL, tool TEXT NOT NULL,
            client TEXT NOT NULL, users BLOB,
            PRIMARY KEY (project_id, bucket, server, tool, client)
        ) WITHOUT ROWID;
        INSERT INTO user_tool_client_day
        SELECT u.project_id, u.day, u.server, u.tool, u.client, user_set(n.number)
        FROM user_day u JOIN user_number n ON n.project_id = u.project_id AND n.user_hash = u.user_hash
        GROUP BY u.project_id, u.day, u.server, u.tool, u.client;
        """,
        down="""
        DROP TABLE user_tool_client_day;
        DROP TABLE user_client_day;
        DROP TABLE error_day;
        DROP TABLE activation_day;
        DROP TABLE session_tool_day;
        DROP TABLE session_day;
        """,
    )
)
