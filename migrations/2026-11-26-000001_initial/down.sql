DROP TABLE runs;
DROP TABLE configuration_versions;
DROP TABLE configuration_archives;
DROP TABLE workspaces;
DROP TABLE vcs_connections;
DROP TABLE api_tokens;
DROP TABLE organizations;
