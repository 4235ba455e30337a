//! The subcommands, run as the real binary or through the same functions.

use std::process::Command;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use secrecy::ExposeSecret;
use terrapod_api::commands;
use terrapod_shared::crypto::KeyRing;
use terrapod_shared::db::schema::vcs_connections;
use terrapod_shared::Settings;

use crate::helpers::spawn_app;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_terrapod-api"));
    command.env("TERRAPOD_LOG__FORMAT", "json");
    command
}

fn settings_for(database_url: &str, keys: &str) -> Settings {
    Settings::from_lookup(|name| match name {
        "TERRAPOD_DATABASE__URL" => Some(database_url.to_owned()),
        "TERRAPOD_ENCRYPTION__KEY" => Some(keys.to_owned()),
        _ => None,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_reencrypts_every_credential_under_the_new_first_key() {
    let app = spawn_app().await;
    let old_key = app.encryption_key.clone().unwrap();
    app.create_github_connection("gh", 1).await;
    app.create_gitlab_connection("gl", "glpat-rotate-me").await;
    let new_key = KeyRing::generate_key();

    // Before rotation only the old key reads the credentials.
    let rotated =
        commands::rotate_keys(&settings_for(app.db.url(), &format!("{new_key},{old_key}")))
            .await
            .unwrap();
    assert_eq!(rotated, 2);

    let new_only = KeyRing::parse(&new_key).unwrap();
    let mut conn = app.connection().await;
    let stored: Vec<(String, Option<String>)> = vcs_connections::table
        .select((
            vcs_connections::provider,
            vcs_connections::encrypted_credential,
        ))
        .load(&mut conn)
        .await
        .unwrap();
    for (provider, ciphertext) in stored {
        let clear = new_only
            .decrypt(&ciphertext.unwrap())
            .expect("readable with the new key alone");
        match provider.as_str() {
            "gitlab" => assert_eq!(clear.expose_secret(), "glpat-rotate-me"),
            _ => assert!(clear.expose_secret().contains("RSA PRIVATE KEY")),
        }
    }
    // With the old key removed, rotation still succeeds: everything is under the new key.
    assert_eq!(
        commands::rotate_keys(&settings_for(app.db.url(), &new_key))
            .await
            .unwrap(),
        2
    );
    // A ring that lacks the key in use refuses, and changes nothing.
    let err = commands::rotate_keys(&settings_for(app.db.url(), &KeyRing::generate_key()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot be decrypted"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_as_a_binary_leaves_credentials_readable() {
    let app = spawn_app().await;
    let old_key = app.encryption_key.clone().unwrap();
    app.create_gitlab_connection("gl", "glpat-bin").await;
    let new_key = KeyRing::generate_key();
    let output = binary()
        .args(["keys", "rotate"])
        .env("TERRAPOD_DATABASE__URL", app.db.url())
        .env("TERRAPOD_ENCRYPTION__KEY", format!("{new_key},{old_key}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ciphertext = app.stored_credential().await;
    assert_eq!(
        KeyRing::parse(&new_key)
            .unwrap()
            .decrypt(&ciphertext)
            .unwrap()
            .expose_secret(),
        "glpat-bin"
    );
}

#[test]
fn keys_generate_prints_a_fernet_key() {
    let output = binary().args(["keys", "generate"]).output().unwrap();
    assert!(output.status.success());
    let key = String::from_utf8(output.stdout).unwrap();
    assert!(KeyRing::parse(key.trim()).is_ok());
}

#[test]
fn malformed_configuration_stops_the_program_with_one_line_naming_the_variable() {
    for (variable, value) in [
        ("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", "soon"),
        ("TERRAPOD_DATABASE__URL", "nope"),
        ("TERRAPOD_ENCRYPTION__KEY", "not-a-fernet-key"),
        ("RUST_LOG", "info,terrapod_api=loud"),
    ] {
        let output = binary().arg("serve").env(variable, value).output().unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(variable), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_prints_a_working_token_alone_on_stdout() {
    let app = spawn_app().await;
    let output = binary()
        .args(["token", "create", "--admin", "--description", "ci"])
        .env("TERRAPOD_DATABASE__URL", app.db.url())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    let token = stdout.trim();
    let response = app
        .request(
            reqwest::Method::GET,
            "/api/v2/organizations/default/workspaces",
            Some(token),
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_a_missing_database_and_is_idempotent() {
    let name = format!(
        "terrapod_test_migrate_{}",
        terrapod_shared::ids::random_base58(8).to_lowercase()
    );
    let server = terrapod_test_support::server_url();
    let url = format!("{}/{name}", server.rsplit_once('/').unwrap().0);
    for _ in 0..2 {
        let output = binary()
            .arg("migrate")
            .env("TERRAPOD_DATABASE__URL", &url)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut conn =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url)
            .await
            .unwrap();
    let default_org: i64 = terrapod_shared::db::schema::organizations::table
        .filter(terrapod_shared::db::schema::organizations::name.eq("default"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(default_org, 1);
    drop(conn);
    let mut admin =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&server)
            .await
            .unwrap();
    use diesel_async::SimpleAsyncConnection;
    admin
        .batch_execute(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
}

/// Starts an API with `bootstrap` as TERRAPOD_AUTH__BOOTSTRAP_TOKEN; returns its address.
async fn serve_with_bootstrap(app: &crate::helpers::TestApp, bootstrap: &str) -> String {
    let settings = Settings::from_lookup(|name| match name {
        "TERRAPOD_DATABASE__URL" => Some(app.db.url().to_owned()),
        "TERRAPOD_API__LISTEN" => Some("127.0.0.1:0".to_owned()),
        "TERRAPOD_ENCRYPTION__KEY" => app.encryption_key.clone(),
        "TERRAPOD_AUTH__BOOTSTRAP_TOKEN" => Some(bootstrap.to_owned()),
        _ => None,
    })
    .unwrap();
    let server = commands::build_server(settings).await.unwrap();
    let address = format!("http://127.0.0.1:{}", server.port());
    tokio::spawn(server.run_until_stopped());
    address
}

async fn status_with(app: &crate::helpers::TestApp, address: &str, token: &str) -> u16 {
    app.client
        .get(format!(
            "{address}/api/v2/organizations/default/vcs-connections"
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_token_is_an_admin_token_and_a_changed_one_revokes_the_previous() {
    let app = spawn_app().await;
    let first = "bootstrap-for-ci-0123456789abcdef0123";
    let address = serve_with_bootstrap(&app, first).await;
    let response = app
        .client
        .post(format!("{address}/api/v2/organizations/default/vcs-connections"))
        .bearer_auth(first)
        .json(&serde_json::json!({"data": {"type": "vcs-connections", "attributes": {"name": "gl", "provider": "gitlab", "token": "t"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "only admins may create connections");
    // An operator rotates the bootstrap token: the old one must stop working.
    let second = "bootstrap-rotated-abcdef0123456789abcdef";
    let address = serve_with_bootstrap(&app, second).await;
    assert_eq!(status_with(&app, &address, second).await, 200);
    assert_eq!(status_with(&app, &address, first).await, 401);
    // Starting again with the same token changes nothing.
    let address = serve_with_bootstrap(&app, second).await;
    assert_eq!(status_with(&app, &address, second).await, 200);
}

#[tokio::test]
async fn a_short_bootstrap_token_is_refused_at_start() {
    let app = spawn_app().await;
    let output = binary()
        .args(["serve"])
        .env("TERRAPOD_DATABASE__URL", app.db.url())
        .env("TERRAPOD_AUTH__BOOTSTRAP_TOKEN", "changeme")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TERRAPOD_AUTH__BOOTSTRAP_TOKEN") && stderr.contains("32"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("changeme"),
        "the value is not echoed: {stderr}"
    );
}

fn token_command(app: &crate::helpers::TestApp, args: &[&str]) -> std::process::Output {
    binary()
        .arg("token")
        .args(args)
        .env("TERRAPOD_DATABASE__URL", app.db.url())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_listed_without_their_secret_and_a_revoked_one_stops_within_seconds() {
    let app = spawn_app().await;
    let created = token_command(&app, &["create", "--admin", "--description", "deploy bot"]);
    assert!(created.status.success());
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    // Used once: the API now holds it in its verified-token cache.
    assert_eq!(status_with(&app, &app.address, &token).await, 200);

    let listed = token_command(&app, &["list"]);
    assert!(listed.status.success());
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(!listed.contains(&token), "never the token itself");
    let line = listed
        .lines()
        .find(|line| line.contains("deploy bot"))
        .unwrap_or_else(|| panic!("{listed}"));
    let columns: Vec<&str> = line.split('\t').collect();
    assert!(columns[0].starts_with("at-"), "{line}");
    assert_eq!(columns[1], "admin");
    assert!(
        !columns[4].is_empty() && columns[4] != "never",
        "last used: {line}"
    );
    let id = columns[0].to_owned();

    let revoked = token_command(&app, &["revoke", &id]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let started = std::time::Instant::now();
    while status_with(&app, &app.address, &token).await != 401 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(7),
            "a revoked token still works after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let listed = String::from_utf8(token_command(&app, &["list"]).stdout).unwrap();
    assert!(!listed.contains(&id), "revoked tokens are hidden: {listed}");
    let all = String::from_utf8(token_command(&app, &["list", "--all"]).stdout).unwrap();
    let line = all.lines().find(|line| line.starts_with(&id)).unwrap();
    assert_eq!(line.split('\t').count(), 6, "a revoked-at column: {line}");
    // An unknown id is an error, not a silent success; revoking twice is idempotent.
    assert!(!token_command(&app, &["revoke", "at-doesnotexist00"])
        .status
        .success());
    let again = token_command(&app, &["revoke", &id]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already revoked"));
}

/// One-shot commands against a database `migrate` has not prepared stop at once with
/// what to do; `serve` waits for the migration, saying so, and serves once it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmigrated_database_is_named_at_once_with_the_command_that_fixes_it() {
    use terrapod_test_support::TestDatabase;
    let empty = TestDatabase::unmigrated().await;
    let missing = TestDatabase::missing_url();
    for (url, says) in [
        (
            empty.url().to_owned(),
            "the database has no Terrapod schema: run `terrapod-api migrate`",
        ),
        (
            missing.clone(),
            "does not exist: `terrapod-api migrate` creates it",
        ),
    ] {
        for args in [
            &["token", "create", "--admin"][..],
            &["token", "list"],
            &["keys", "rotate"],
        ] {
            let started = std::time::Instant::now();
            let output = binary()
                .args(args)
                .env("TERRAPOD_DATABASE__URL", &url)
                .env("TERRAPOD_ENCRYPTION__KEY", KeyRing::generate_key())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.contains(says), "{args:?}: {stderr}");
            assert!(output.stdout.is_empty());
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{args:?} retried"
            );
        }
    }

    // `serve` waits, saying why, and serves once the schema is there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = binary()
        .arg("serve")
        .env("TERRAPOD_DATABASE__URL", empty.url())
        .env("TERRAPOD_API__LISTEN", format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = serve.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let waiting = seen
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    assert!(
        waiting.contains("waiting for `terrapod-api migrate`"),
        "{waiting}"
    );
    assert!(waiting.contains("run `terrapod-api migrate`"), "{waiting}");
    terrapod_shared::db::run_migrations(empty.url())
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let mut served = false;
    for _ in 0..150 {
        if client
            .get(format!("http://127.0.0.1:{port}/api/v2/ping"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 204)
        {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(served, "serve did not start after the migration");
}
