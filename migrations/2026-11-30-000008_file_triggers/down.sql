DROP TABLE vcs_events;
ALTER TABLE workspaces
    DROP COLUMN file_triggers_enabled,
    DROP COLUMN trigger_prefixes,
    DROP COLUMN trigger_patterns,
    DROP COLUMN speculative_enabled;
