//! The shared request budget against a real PostgreSQL: two "replicas" (two budget
//! instances on one database) never grant more than the limit in any window, and never
//! hold more than the concurrency cap at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use terrapod_shared::db;
use terrapod_shared::domain::Provider;
use terrapod_shared::vcs::budget::{
    BudgetKey, BudgetLimits, Priority, RequestBudget, MAX_CONCURRENT,
};
use terrapod_test_support::TestDatabase;

fn budget(db: &TestDatabase, per_window: u32, window: Duration) -> Arc<RequestBudget> {
    Arc::new(RequestBudget::new(
        db::pool(db.url(), "budget-test", 4).unwrap(),
        BudgetLimits {
            github_per_window: per_window,
            gitlab_per_window: per_window,
            window,
        },
        None,
    ))
}

/// The most grants within any `window` of the recorded grant times.
fn max_in_window(mut times: Vec<Instant>, window: Duration) -> usize {
    times.sort();
    let mut start = 0;
    let mut max = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= window {
            start += 1;
        }
        max = max.max(end - start + 1);
    }
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_never_grant_more_than_the_limit_in_any_window() {
    let db = TestDatabase::new().await;
    let window = Duration::from_secs(2);
    let replicas = [budget(&db, 10, window), budget(&db, 10, window)];
    let key = BudgetKey::github_installation("https://api.github.com", 1);
    let granted = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..30 {
        let (budget, key, granted) = (replicas[n % 2].clone(), key.clone(), granted.clone());
        tasks.push(tokio::spawn(async move {
            // Requested polls may use the whole budget; scheduled ones all but a tenth.
            let lease = budget
                .acquire(&key, Priority::Requested, 1, Duration::from_secs(5))
                .await
                .unwrap();
            granted.lock().unwrap().push(Instant::now());
            lease.release();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let times = granted.lock().unwrap().clone();
    assert_eq!(times.len(), 30);
    assert!(max_in_window(times, window) <= 10);
    assert!(
        started.elapsed() >= window * 2,
        "30 requests at 10 per window take at least two more windows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_requests_leave_a_tenth_of_the_budget_to_requested_ones() {
    let db = TestDatabase::new().await;
    let window = Duration::from_secs(3);
    let budget = budget(&db, 20, window);
    let key = BudgetKey::gitlab_token("https://gitlab.example.com", "abcd");
    for _ in 0..18 {
        budget
            .acquire(&key, Priority::Scheduled, 1, Duration::from_secs(5))
            .await
            .unwrap()
            .release();
    }
    // The schedule has used its 18; another scheduled request must wait for the window.
    let waiting = {
        let (budget, key) = (budget.clone(), key.clone());
        tokio::spawn(async move {
            budget
                .acquire(&key, Priority::Scheduled, 1, Duration::from_secs(5))
                .await
                .unwrap()
                .release();
            Instant::now()
        })
    };
    let asked = Instant::now();
    for _ in 0..2 {
        budget
            .acquire(&key, Priority::Requested, 1, Duration::from_secs(5))
            .await
            .unwrap()
            .release();
    }
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "the reserve was there"
    );
    let scheduled_at = waiting.await.unwrap();
    assert!(scheduled_at.duration_since(asked) >= Duration::from_secs(1));
    let key_github = BudgetKey::github_installation("https://ghe.example.com", 9);
    assert_eq!(key_github.provider, Provider::GitHub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_more_requests_than_the_cap_are_in_flight_at_once() {
    let db = TestDatabase::new().await;
    let replicas = [
        budget(&db, 10_000, Duration::from_secs(60)),
        budget(&db, 10_000, Duration::from_secs(60)),
    ];
    let key = BudgetKey::github_installation("https://api.github.com", 2);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..(MAX_CONCURRENT as usize + 10) {
        let (budget, key) = (replicas[n % 2].clone(), key.clone());
        let (in_flight, most) = (in_flight.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let lease = budget
                .acquire(&key, Priority::Requested, 1, Duration::from_secs(30))
                .await
                .unwrap();
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            lease.release();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), MAX_CONCURRENT as usize);
}
