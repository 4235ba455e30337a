// Mirrors migrations/; `tests/schema.rs` checks the two agree.

diesel::table! {
    organizations (name) {
        name -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    api_tokens (id) {
        id -> Int8,
        token_sha256 -> Bytea,
        role -> Text,
        description -> Text,
        created_at -> Timestamptz,
        public_id -> Text,
        revoked_at -> Nullable<Timestamptz>,
        last_used_at -> Nullable<Timestamptz>,
        bootstrap -> Bool,
    }
}

diesel::table! {
    vcs_connections (id) {
        id -> Text,
        organization_name -> Text,
        name -> Text,
        provider -> Text,
        server_url -> Text,
        status -> Text,
        github_app_id -> Nullable<Int8>,
        github_installation_id -> Nullable<Int8>,
        github_account_login -> Nullable<Text>,
        github_account_type -> Nullable<Text>,
        encrypted_credential -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    workspaces (id) {
        id -> Text,
        organization_name -> Text,
        name -> Text,
        execution_mode -> Text,
        auto_apply -> Bool,
        vcs_connection_id -> Nullable<Text>,
        vcs_repo_url -> Text,
        vcs_branch -> Text,
        working_directory -> Text,
        vcs_last_commit_sha -> Nullable<Text>,
        vcs_last_polled_at -> Nullable<Timestamptz>,
        vcs_last_error -> Nullable<Text>,
        vcs_last_error_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        vcs_last_attempt_at -> Nullable<Timestamptz>,
        vcs_repo_path -> Text,
        run_count -> Int8,
        vcs_settings_generation -> Int8,
        vcs_poll_queued_at -> Nullable<Timestamptz>,
        vcs_poll_requested_at -> Nullable<Timestamptz>,
        file_triggers_enabled -> Bool,
        trigger_prefixes -> Array<Text>,
        trigger_patterns -> Array<Text>,
        speculative_enabled -> Bool,
        vcs_tags_regex -> Nullable<Text>,
        vcs_tags_baselined_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    workspace_seen_tags (workspace_id, name) {
        workspace_id -> Text,
        name -> Text,
        commit_sha -> Text,
    }
}

diesel::table! {
    vcs_events (id) {
        id -> Int8,
        workspace_id -> Text,
        kind -> Text,
        commit_sha -> Nullable<Text>,
        pull_request_number -> Nullable<Int8>,
        message -> Text,
        dedup_key -> Nullable<Text>,
        created_at -> Timestamptz,
        run_id -> Nullable<Text>,
    }
}

diesel::table! {
    webhook_deliveries (provider, delivery_id) {
        provider -> Text,
        delivery_id -> Text,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    configuration_archives (sha256) {
        sha256 -> Text,
        size -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    configuration_archive_chunks (archive_sha256, seq) {
        archive_sha256 -> Text,
        seq -> Int4,
        data -> Bytea,
    }
}

diesel::table! {
    commit_archives (connection_id, repo_path, commit_sha) {
        connection_id -> Text,
        repo_path -> Text,
        commit_sha -> Text,
        archive_sha256 -> Nullable<Text>,
        refusal -> Nullable<Text>,
        refused_max_archive_bytes -> Nullable<Int8>,
        refused_max_unpacked_bytes -> Nullable<Int8>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    configuration_versions (id) {
        id -> Text,
        workspace_id -> Text,
        source -> Text,
        status -> Text,
        speculative -> Bool,
        vcs_commit_sha -> Text,
        vcs_branch -> Text,
        vcs_pull_request_number -> Nullable<Int8>,
        working_directory -> Text,
        archive_sha256 -> Text,
        size -> Int8,
        created_at -> Timestamptz,
        ingress -> Nullable<Jsonb>,
    }
}

diesel::table! {
    runs (id) {
        id -> Text,
        workspace_id -> Text,
        configuration_version_id -> Text,
        status -> Text,
        source -> Text,
        plan_only -> Bool,
        auto_apply -> Bool,
        message -> Text,
        trigger_reason -> Text,
        vcs_commit_sha -> Text,
        vcs_branch -> Text,
        vcs_pull_request_number -> Nullable<Int8>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        vcs_tag -> Nullable<Text>,
        status_timestamps -> Jsonb,
        status_sequence -> Int8,
        status_message -> Nullable<Text>,
    }
}

diesel::table! {
    run_events_outbox (id) {
        id -> Int8,
        run_id -> Text,
        workspace_id -> Text,
        organization_name -> Text,
        status -> Text,
        previous_status -> Nullable<Text>,
        sequence -> Int8,
        at -> Timestamptz,
    }
}

diesel::table! {
    commit_status_reports (run_id) {
        run_id -> Text,
        check_run_id -> Nullable<Int8>,
        reported_sequence -> Int8,
        updated_at -> Timestamptz,
        wanted_sequence -> Int8,
        check_name -> Nullable<Text>,
        repo_url -> Nullable<Text>,
        lease_until -> Nullable<Timestamptz>,
        failures -> Int4,
        first_failure_at -> Nullable<Timestamptz>,
        next_attempt_at -> Timestamptz,
    }
}

diesel::joinable!(vcs_connections -> organizations (organization_name));
diesel::joinable!(workspaces -> organizations (organization_name));
diesel::joinable!(workspaces -> vcs_connections (vcs_connection_id));
diesel::joinable!(configuration_versions -> workspaces (workspace_id));
diesel::joinable!(configuration_versions -> configuration_archives (archive_sha256));
diesel::joinable!(configuration_archive_chunks -> configuration_archives (archive_sha256));
diesel::joinable!(commit_archives -> vcs_connections (connection_id));
diesel::joinable!(commit_archives -> configuration_archives (archive_sha256));
diesel::joinable!(runs -> workspaces (workspace_id));
diesel::joinable!(vcs_events -> workspaces (workspace_id));
diesel::joinable!(workspace_seen_tags -> workspaces (workspace_id));
diesel::joinable!(runs -> configuration_versions (configuration_version_id));
diesel::joinable!(commit_status_reports -> runs (run_id));

diesel::allow_tables_to_appear_in_same_query!(
    organizations,
    api_tokens,
    vcs_connections,
    workspaces,
    configuration_archives,
    configuration_archive_chunks,
    commit_archives,
    configuration_versions,
    runs,
    webhook_deliveries,
    vcs_events,
    workspace_seen_tags,
    run_events_outbox,
    commit_status_reports,
);
