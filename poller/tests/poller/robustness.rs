//! The poller keeps working through broker outages and database connection loss.

use std::time::{Duration, Instant};

use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use terrapod_shared::ids::WorkspaceId;
use terrapod_shared::queue::{self, PollMessage, PollReason, Publisher, POLL_QUEUE};
use terrapod_test_support::TcpProxy;
use terrapod_vcs_sim::Kind;

use crate::helpers::{poll, World};

/// (messages ready, consumers) of the poll queue; (0, 0) until it is declared.
async fn queue_state(amqp_url: &str) -> (u32, u32) {
    let connection = queue::connect(amqp_url, "test-inspector").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let Ok(state) = channel
        .queue_declare(
            POLL_QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
    else {
        let _ = connection.close(200, "done".into()).await;
        return (0, 0);
    };
    let _ = connection.close(200, "done".into()).await;
    (state.message_count(), state.consumer_count())
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_broker_down_the_schedule_keeps_creating_runs_and_the_consumer_comes_back() {
    let world = World::new().await;
    let (_, ws) = world
        .repo_with_workspace(Kind::Github, "acme/infra", "infra")
        .await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let via_proxy = world.vhost.url_via(&proxy.address());
    let ctx = world.context(&[
        ("TERRAPOD_AMQP__URL", via_proxy.as_str()),
        ("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", "1"),
    ]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn(terrapod_poller::run(ctx, listener, shutdown));
    let direct = world.vhost.url();
    eventually("the consumer", Duration::from_secs(20), || async {
        queue_state(&direct).await.1 == 1
    })
    .await;
    eventually("the first run", Duration::from_secs(10), || async {
        world.runs(&ws).await.len() == 1
    })
    .await;

    proxy.cut();
    eventually(
        "the consumer to be gone",
        Duration::from_secs(20),
        || async { queue_state(&direct).await.1 == 0 },
    )
    .await;
    let sha = world
        .sim
        .commit(
            Kind::Github,
            "acme/infra",
            "main",
            "while the broker is away",
            &[("b.tf", "")],
        )
        .await;
    eventually(
        "a run from the schedule",
        Duration::from_secs(10),
        || async {
            world
                .runs(&ws)
                .await
                .iter()
                .any(|r| r.vcs_commit_sha == sha)
        },
    )
    .await;

    proxy.restore();
    eventually(
        "the consumer to reconnect",
        Duration::from_secs(40),
        || async { queue_state(&direct).await.1 == 1 },
    )
    .await;
    let publisher = Publisher::new(&direct, "test");
    publisher
        .publish(
            &PollMessage::new(&WorkspaceId::generate(), PollReason::Manual),
            None,
        )
        .await
        .unwrap();
    eventually(
        "the message to be consumed",
        Duration::from_secs(10),
        || async { queue_state(&direct).await.0 == 0 },
    )
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), poller)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_database_connections_are_survived() {
    let world = World::new().await;
    let (_, ws) = world
        .repo_with_workspace(Kind::Github, "acme/infra", "infra")
        .await;
    let ctx = world.context(&[]);
    poll(&ctx, &ws).await;
    let mut admin = world.db.connection().await;
    diesel::sql_query(
        "SELECT pg_terminate_backend(pid)::text AS name FROM pg_stat_activity WHERE datname = $1 AND application_name = 'terrapod-poller'",
    )
    .bind::<Text, _>(world.db.name())
    .execute(&mut admin)
    .await
    .unwrap();
    let sha = world
        .sim
        .commit(
            Kind::Github,
            "acme/infra",
            "main",
            "after the outage",
            &[("b.tf", "")],
        )
        .await;
    let cache = terrapod_poller::cache::CycleCache::default();
    let mut created = false;
    for _ in 0..5 {
        if terrapod_poller::poll::poll_workspace(
            &ctx,
            &cache,
            &ws,
            terrapod_poller::poll::Trigger::Message,
        )
        .await
        .is_ok()
            && world
                .runs(&ws)
                .await
                .iter()
                .any(|r| r.vcs_commit_sha == sha)
        {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(created, "the poller recovered from the lost connections");
}

/// A GitHub connection's App id or private key changed: the next poll mints a new
/// installation token with them (and fails at once if they are wrong) instead of
/// reusing the token the old ones minted, which stays valid for an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_change_is_used_by_the_next_poll_not_the_cached_token() {
    use diesel::{ExpressionMethods, QueryDsl};
    use terrapod_shared::crypto::KeyRing;
    use terrapod_shared::db::schema::vcs_connections;

    let world = World::new().await;
    let ctx = world.context(&[]);
    let (_, workspace) = world
        .repo_with_workspace(Kind::Github, "acme/keys", "keys")
        .await;
    let github = world.connection_for(Kind::Github).clone();
    let minted = || world.sim.stats(Kind::Github).tokens_minted;
    let (runs, error) = crate::helpers::polled(poll(&ctx, &workspace).await);
    assert_eq!((runs, error), (1, None));
    assert_eq!(minted(), 1);

    // Another key, which the App does not have.
    let other_key = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl");
    assert!(other_key.status.success());
    let other_key = String::from_utf8(other_key.stdout).unwrap();
    let keys = KeyRing::parse(&world.key).unwrap();
    let mut conn = world.db.connection().await;
    let set_credential = |pem: &str| {
        diesel::update(vcs_connections::table.find(&github))
            .set(vcs_connections::encrypted_credential.eq(keys.encrypt(pem)))
    };
    set_credential(&other_key).execute(&mut conn).await.unwrap();
    let (_, error) = crate::helpers::polled(poll(&ctx, &workspace).await);
    let error = error.expect("the wrong key is found out at once");
    assert!(
        error.contains("rejected the connection's credentials"),
        "{error}"
    );

    // Back to the right key, then a wrong App id: each change is tried at once.
    set_credential(terrapod_test_support::GITHUB_APP_TEST_KEY)
        .execute(&mut conn)
        .await
        .unwrap();
    let (_, error) = crate::helpers::polled(poll(&ctx, &workspace).await);
    assert_eq!(error, None);
    diesel::update(vcs_connections::table.find(&github))
        .set(vcs_connections::github_app_id.eq(Some(4242)))
        .execute(&mut conn)
        .await
        .unwrap();
    let (_, error) = crate::helpers::polled(poll(&ctx, &workspace).await);
    assert!(error.is_some_and(|e| e.contains("rejected the connection's credentials")));
}
