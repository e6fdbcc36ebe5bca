"""Versioned schema of the SQLite store. Append only: never edit a released migration."""

from __future__ import annotations

from .base import Migration

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
